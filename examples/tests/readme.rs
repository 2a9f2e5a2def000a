//! The README's "A complete program" is `examples/readme.rs`, which CI runs: they must not
//! drift apart.

#[test]
fn the_readme_program_is_the_readme_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/readme.rs");
    let start = readme
        .find("## A complete program")
        .expect("the README has an \"A complete program\" section");
    let rest = &readme[start..];
    let code = rest
        .find("```rust")
        .map(|i| &rest[i..])
        .and_then(|r| r.find('\n').map(|n| &r[n + 1..]))
        .expect("a rust block");
    let end = code.find("\n```").expect("the block ends");
    assert_eq!(
        code[..=end].trim_end(),
        example.trim_end(),
        "README.md and examples/examples/readme.rs differ"
    );
}
