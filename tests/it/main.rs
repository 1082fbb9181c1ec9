//! The integration test binary: one binary so that linking happens once.

mod support;
mod synapse_smoke;
