//! The full gRPC path of every method a token can be issued for: a token's
//! MAC covers the path, so client and server must name methods the same
//! way, and both take the names from here.

pub const APPEND: &str = "/txlog.v1.LogService/Append";
pub const APPEND_STREAM: &str = "/txlog.v1.LogService/AppendStream";
pub const READ: &str = "/txlog.v1.LogService/Read";
pub const LOOKUP: &str = "/txlog.v1.LogService/Lookup";
pub const SUBSCRIBE: &str = "/txlog.v1.LogService/Subscribe";

pub const STATUS: &str = "/txlog.v1.AdminService/Status";
pub const JOIN: &str = "/txlog.v1.AdminService/Join";
pub const REMOVE: &str = "/txlog.v1.AdminService/Remove";
pub const TRANSFER_LEADER: &str = "/txlog.v1.AdminService/TransferLeader";
pub const SNAPSHOT: &str = "/txlog.v1.AdminService/Snapshot";
pub const COMPACT: &str = "/txlog.v1.AdminService/Compact";
pub const ROTATE_KEYS: &str = "/txlog.v1.AdminService/RotateKeys";
pub const ROTATE_KEK: &str = "/txlog.v1.AdminService/RotateKek";
pub const ADD_CLIENT_KEY: &str = "/txlog.v1.AdminService/AddClientKey";
pub const REVOKE_CLIENT_KEY: &str = "/txlog.v1.AdminService/RevokeClientKey";
pub const SET_ROLE: &str = "/txlog.v1.AdminService/SetRole";
pub const SET_ALLOWLIST: &str = "/txlog.v1.AdminService/SetAllowlist";
pub const LIST_ACCESS: &str = "/txlog.v1.AdminService/ListAccess";
pub const RECORD_AUDIT: &str = "/txlog.v1.AdminService/RecordAudit";
