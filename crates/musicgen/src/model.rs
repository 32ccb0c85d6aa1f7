//! The loaded model and the one entry point that turns a request into audio.
