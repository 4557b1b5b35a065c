//! Image formats: detection by magic bytes, decoders, the native qcow2 reader, partition tables
//! and virtual sizes read from container metadata.

pub mod bzip2_block;
pub mod bzip2_mt;
pub mod format;
pub mod partitions;
pub mod probe;
pub mod qcow2;
pub mod size;
