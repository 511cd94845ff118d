//! PC legacy devices on the port-I/O bus: 8250 serial, i8042 (reset only), CMOS RTC, and the
//! ACPI power-management block.

pub mod i8042;
pub mod pm;
pub mod rtc;
pub mod serial;
#[cfg(any(debug_assertions, test))]
pub mod test_fault;

pub use i8042::I8042;
pub use pm::PowerManagement;
pub use rtc::Cmos;
pub use serial::{SerialDevice, SerialOutput};
