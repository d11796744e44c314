//! Carrier models (filled in by the carrier work).
