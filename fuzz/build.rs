// The module leaves Lua's symbols to the lua5.4 that loads it; a fuzz target is its own
// program, so it links Debian's liblua5.4 (liblua5.4-dev).
fn main() {
    println!("cargo:rustc-link-lib=dylib=lua5.4");
}
