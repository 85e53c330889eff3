//! [`go_tests!`](crate::go_tests): the same check run as one test per Go toolchain and build.

/// One `#[test]` per line, each `#[ignore = "needs root"]`, that runs `check(TOOLCHAIN,
/// BUILD)` (a function of a [`Toolchain`](crate::support::go::Toolchain) and a
/// [`GoBuild`](crate::support::go::GoBuild)); a line's doc comment is its test's:
///
/// ```ignore
/// tracer_tests::go_tests! {
///     check: names_each_wait_site;
///     /// Debian's Go 1.19.
///     go_1_19_wait_sites_are_named: Toolchain::System, GoBuild::default();
/// }
/// ```
#[macro_export]
macro_rules! go_tests {
    (check: $check:path; $($(#[$attr:meta])* $test:ident: $toolchain:expr, $build:expr;)*) => {$(
        $(#[$attr])*
        #[test]
        #[ignore = "needs root"]
        fn $test() {
            $check($toolchain, $build);
        }
    )*};
}
