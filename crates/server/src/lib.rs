//! DGX Music server: HTTP API, job queue, history, web page.
pub mod web;
