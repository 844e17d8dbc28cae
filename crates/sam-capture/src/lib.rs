//! sam-capture (being built).
