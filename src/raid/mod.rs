//! RAID volumes: layout math, levels 0/1/5, parity and stripe locks.
