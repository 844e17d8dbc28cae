//! sam-store (being built).
