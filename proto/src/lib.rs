//! The gRPC admin API of the Outrider agent (`outrider.admin.v1`), generated from
//! `outrider/admin/v1/*.proto`: message types, the tonic client and server, and the file
//! descriptor set that server reflection serves.
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("outrider.admin.v1");

        /// Encoded `FileDescriptorSet` of this package, for tonic-reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
    }
}
