//! Stub so `cargo` can treat this crate as a library; the programs live in `main.rs`.
#![no_std]
