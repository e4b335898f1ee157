fn main() { println!("see bench/README.md"); }
