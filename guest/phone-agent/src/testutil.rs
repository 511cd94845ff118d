//! Test helpers shared by the unit tests.

use proptest::strategy::Strategy;
use proptest::test_runner::{TestCaseError, TestRunner};

/// Runs a property test and prints how many cases it ran (the project's fuzz convention).
pub fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::default();
    let cases = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |v| {
        cases.set(cases.get() + 1);
        test(v)
    });
    eprintln!("fuzz {name}: {} cases", cases.get());
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
}
