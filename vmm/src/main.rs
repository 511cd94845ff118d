fn main() {
    eprintln!("cloudphone-vmm: not built yet");
    std::process::exit(2);
}
