//! Compile-time behaviour of the macros: what compiles, and the errors users see otherwise.
//!
//! Snapshots are rustc's wording on the stable toolchain; refresh with `TRYBUILD=overwrite`
//! after a toolchain update, and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
