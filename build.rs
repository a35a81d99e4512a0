// The module itself never links liblua (the host lua5.4 provides the symbols); the Rust
// integration tests create their own Lua state and need it.
fn main() {
    println!("cargo:rustc-link-arg-tests=-llua5.4");
}
