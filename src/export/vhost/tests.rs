//! Unit tests of the parser, the config space and request execution.
