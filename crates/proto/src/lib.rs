//! gRPC contracts of Tributary, compiled from `proto/` at build time.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tributary.v1");
}

/// Encoded `FileDescriptorSet` of every Tributary proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tributary_descriptor.bin"));
