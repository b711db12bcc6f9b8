//! Outrider's tooling, apart from the product: the `outrider-testbed` binary (`main.rs`)
//! is its command line. Nothing here ships in the image; the `outrider` crate is used
//! through its public items only, and never depends on this one.
//!
//! - `testbed` builds Kubernetes-like nodes and pods on one machine (network namespaces,
//!   veths, cgroups) with one `outrider` agent per node: the playground of the end-to-end
//!   tests (`tests/`), the demo, the benchmark and people.
//! - `loadgen` generates and measures TCP load (the benchmark's workload).
//! - `fuzzing` holds the fuzz targets' entry points (`fuzz/`).
#[doc(hidden)]
pub mod fuzzing;
pub mod loadgen;
pub mod testbed;
