//! On-disk metadata: superblock codec, array creation and assembly.
