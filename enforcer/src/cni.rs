//! The netpol-cni chained CNI plugin.

pub mod install;
