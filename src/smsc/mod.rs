//! The embedded SMPP 3.4 SMSC.
