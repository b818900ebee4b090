//! (filled in by the test-kit work of issue #11)
