//! The checks of the fuzz targets, shared with the corpus replay test of `codec/tests`.

#[path = "../../tests/common/roundtrip.rs"]
pub mod roundtrip;
