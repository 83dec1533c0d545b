//! NBD server (fixed newstyle, structured replies).
