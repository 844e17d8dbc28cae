//! sam-prep (being built).
