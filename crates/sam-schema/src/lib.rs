//! sam-schema (being built).
