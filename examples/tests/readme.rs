//! The README's "A complete program" is `examples/readme.rs`, which CI runs, and its test
//! example is the tests of `examples/orders.rs`, which `cargo test` runs: they must not drift
//! apart.

#[test]
fn the_readme_program_is_the_readme_example() {
    let example = include_str!("../examples/readme.rs");
    assert_eq!(
        first_rust_block("## A complete program"),
        example.trim_end(),
        "README.md and examples/examples/readme.rs differ"
    );
}

#[test]
fn the_readme_tests_are_the_orders_example_tests() {
    let orders = include_str!("../examples/orders.rs");
    let start = orders
        .find("#[cfg(test)]\nmod tests {")
        .expect("orders.rs ends with its tests");
    assert_eq!(
        first_rust_block("## Testing handlers and aggregates"),
        orders[start..].trim_end(),
        "README.md and the tests in examples/examples/orders.rs differ"
    );
}

#[test]
fn the_readme_dashboard_snippet_is_the_dashboard_mount_example() {
    assert_eq!(
        first_rust_block("### The dashboard"),
        include_str!("../examples/dashboard_mount.rs").trim_end(),
        "README.md and examples/examples/dashboard_mount.rs differ"
    );
}

/// The first ```rust block after `heading`, without its fences.
fn first_rust_block(heading: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("the README has a {heading:?} section"));
    let rest = &readme[start..];
    let code = rest
        .find("```rust")
        .map(|i| &rest[i..])
        .and_then(|r| r.find('\n').map(|n| &r[n + 1..]))
        .expect("a rust block");
    let end = code.find("\n```").expect("the block ends");
    code[..=end].trim_end()
}
