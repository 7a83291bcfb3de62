//! The authorisation layer's DER reader (a client certificate's subject CN) on arbitrary bytes:
//! never a panic, never a read past the input. The module is included by path: it has no
//! dependencies, so the fuzz build does not compile tributary-core's.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/core/src/der.rs"]
mod der;

fuzz_target!(|data: &[u8]| {
    if let Some(cn) = der::subject_cn(data) {
        // A CN is UTF-8 text taken from inside the input.
        assert!(cn.len() <= data.len());
    }
});
