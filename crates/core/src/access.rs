//! Who may do what: the roles a token carries, and the rules that decide, for a
//! caller and an action, whether it is allowed. Pure: the server resolves the
//! caller from its credential and asks here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, check_name};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads everything, changes nothing.
    Viewer,
    /// Submits, reads and cancels the runs of one tenant; reads that tenant and
    /// the pools it may use.
    Tenant { tenant: String },
    /// Registers agents into one static pool.
    Agent { pool: String },
}

impl Role {
    pub const NAMES: [&'static str; 4] = ["admin", "viewer", "tenant", "agent"];

    /// Builds a role from its name and the tenant or pool it is bound to; each
    /// error names the field.
    pub fn parse(role: &str, tenant: Option<&str>, pool: Option<&str>) -> Result<Role, FieldError> {
        let unbound = |field: &str, value: Option<&str>| match value {
            Some(_) => Err(FieldError::new(
                field,
                format!("a {role} token is not bound to a {field}"),
            )),
            None => Ok(()),
        };
        let bound = |field: &str, value: Option<&str>| -> Result<String, FieldError> {
            let value = value
                .ok_or_else(|| FieldError::new(field, format!("a {role} token needs a {field}")))?;
            check_name(field, value)?;
            Ok(value.to_string())
        };
        match role {
            "admin" | "viewer" => {
                unbound("tenant", tenant)?;
                unbound("pool", pool)?;
                Ok(if role == "admin" {
                    Role::Admin
                } else {
                    Role::Viewer
                })
            }
            "tenant" => {
                unbound("pool", pool)?;
                Ok(Role::Tenant {
                    tenant: bound("tenant", tenant)?,
                })
            }
            "agent" => {
                unbound("tenant", tenant)?;
                Ok(Role::Agent {
                    pool: bound("pool", pool)?,
                })
            }
            other => Err(FieldError::new(
                "role",
                format!("{other:?} is not a role ({})", Role::NAMES.join(", ")),
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Tenant { .. } => "tenant",
            Role::Agent { .. } => "agent",
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            Role::Tenant { tenant } => Some(tenant),
            _ => None,
        }
    }

    pub fn pool(&self) -> Option<&str> {
        match self {
            Role::Agent { pool } => Some(pool),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin | Role::Viewer => f.write_str(self.name()),
            Role::Tenant { tenant } => write!(f, "tenant {tenant}"),
            Role::Agent { pool } => write!(f, "agent of pool {pool}"),
        }
    }
}

/// What a route does, as far as access goes. Every route of the API has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// No credential: liveness and the API's description.
    Public,
    /// Reads that every role but `agent` may make; a tenant sees only its own
    /// (the handler scopes what it answers).
    Read,
    /// Reads of everything, for `admin` and `viewer` only (tokens, audit).
    ReadAll,
    /// Changes to pools, tenants and tokens: `admin` only.
    Admin,
    /// Submitting and cancelling runs: `admin`, and `tenant` for its own runs.
    Operate,
    /// Registering an agent: an `agent` token of the pool, a local worker's
    /// one-time credential, or `admin`.
    Register,
    /// The calls of a registered agent, made with its worker secret.
    Worker,
}

impl Access {
    /// Whether a token of `role` may call a route of this kind at all (the
    /// handler may still refuse one object: another tenant's run, another pool).
    pub fn allows(self, role: &Role) -> bool {
        match (self, role) {
            (Access::Public, _) => true,
            (Access::Worker, _) => false,
            (_, Role::Admin) => true,
            (Access::Read, Role::Viewer | Role::Tenant { .. }) => true,
            (Access::ReadAll, Role::Viewer) => true,
            (Access::Operate, Role::Tenant { .. }) => true,
            (Access::Register, Role::Agent { .. }) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Role {
        Role::Tenant {
            tenant: name.into(),
        }
    }

    #[test]
    fn roles_parse_with_their_binding_and_name_the_field_otherwise() {
        assert_eq!(Role::parse("admin", None, None), Ok(Role::Admin));
        assert_eq!(
            Role::parse("tenant", Some("acme"), None),
            Ok(tenant("acme"))
        );
        assert_eq!(
            Role::parse("agent", None, Some("metal")),
            Ok(Role::Agent {
                pool: "metal".into()
            })
        );
        let e = Role::parse("tenant", None, None).expect_err("needs a tenant");
        assert_eq!(e.path, "tenant");
        let e = Role::parse("viewer", None, Some("metal")).expect_err("unbound");
        assert_eq!(e.path, "pool");
        let e = Role::parse("root", None, None).expect_err("unknown");
        assert_eq!(e.path, "role");
        let e = Role::parse("agent", None, Some("bad name")).expect_err("bad pool");
        assert_eq!(e.path, "pool");
    }

    #[test]
    fn each_access_admits_exactly_its_roles() {
        let roles = [
            Role::Admin,
            Role::Viewer,
            tenant("acme"),
            Role::Agent {
                pool: "metal".into(),
            },
        ];
        let table = [
            (Access::Public, [true, true, true, true]),
            (Access::Read, [true, true, true, false]),
            (Access::ReadAll, [true, true, false, false]),
            (Access::Admin, [true, false, false, false]),
            (Access::Operate, [true, false, true, false]),
            (Access::Register, [true, false, false, true]),
            (Access::Worker, [false, false, false, false]),
        ];
        for (access, expected) in table {
            for (role, want) in roles.iter().zip(expected) {
                assert_eq!(access.allows(role), want, "{access:?} for {role}");
            }
        }
    }
}
