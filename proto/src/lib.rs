//! The gRPC APIs of the Outrider agent, generated from `outrider/*/v1/*.proto`: the admin
//! API (`outrider.admin.v1`) and the service it gives its node's sidecars
//! (`outrider.sidecar.v1`): message types, the tonic client and server, and the file
//! descriptor set that server reflection serves.
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("outrider.admin.v1");

        /// Encoded `FileDescriptorSet` of this package, for tonic-reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
    }
}

pub mod sidecar {
    pub mod v1 {
        tonic::include_proto!("outrider.sidecar.v1");
    }
}
