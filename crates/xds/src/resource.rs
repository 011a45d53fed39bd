//! Type URLs and helpers to decode the resources ztunnel subscribes to.

use prost::Message;

use crate::proto::{
    istio::{security::Authorization, workload::Address},
    protobuf::Any,
};

/// Type URL of [`Address`] resources (workloads and services).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of [`Authorization`] resources (L4 policies).
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// A resource that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The `Any` carried another type.
    #[error("resource {name:?}: expected type {expected}, got {actual:?}")]
    WrongType {
        /// The resource's name.
        name: String,
        /// The type URL that was wanted.
        expected: String,
        /// The type URL the `Any` carried.
        actual: String,
    },
    /// The bytes are not a valid message.
    #[error("resource {name:?}: invalid {type_url}")]
    Invalid {
        /// The resource's name.
        name: String,
        /// The type URL being decoded.
        type_url: String,
        /// What prost found wrong.
        #[source]
        source: prost::DecodeError,
    },
    /// The resource carried no body.
    #[error("resource {name:?}: no body")]
    Missing {
        /// The resource's name.
        name: String,
    },
}

/// Decodes `any` as a `T`, checking the type URL; `name` is the resource
/// name used in errors.
pub fn decode_any<T: Message + prost::Name + Default>(
    name: &str,
    any: &Any,
) -> Result<T, DecodeError> {
    let expected = T::type_url();
    if any.type_url != expected {
        return Err(DecodeError::WrongType {
            name: name.to_owned(),
            expected,
            actual: any.type_url.clone(),
        });
    }
    T::decode(any.value.as_slice()).map_err(|source| DecodeError::Invalid {
        name: name.to_owned(),
        type_url: expected,
        source,
    })
}

/// Decodes an `istio.workload.Address` resource.
pub fn decode_address(name: &str, any: &Any) -> Result<Address, DecodeError> {
    decode_any(name, any)
}

/// Decodes an `istio.security.Authorization` resource.
pub fn decode_authorization(name: &str, any: &Any) -> Result<Authorization, DecodeError> {
    decode_any(name, any)
}

/// Wraps a message in an `Any` with its type URL.
pub fn to_any<T: Message + prost::Name>(message: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload::{Workload, address};

    #[test]
    fn type_urls_match_generated_names() {
        assert_eq!(<Address as prost::Name>::type_url(), ADDRESS_TYPE_URL);
        assert_eq!(
            <Authorization as prost::Name>::type_url(),
            AUTHORIZATION_TYPE_URL
        );
    }

    #[test]
    fn decode_errors_name_the_resource() {
        let address = Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: "u1".into(),
                ..Default::default()
            })),
        };
        let any = to_any(&address);
        assert_eq!(decode_address("u1", &any).expect("decodes"), address);

        let err = decode_authorization("u1", &any).expect_err("wrong type");
        assert!(err.to_string().contains("\"u1\""), "{err}");
        assert!(err.to_string().contains("istio.security.Authorization"));

        let garbage = Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0x0a, 0xff],
        };
        let err = decode_address("bad-one", &garbage).expect_err("garbage");
        assert!(matches!(err, DecodeError::Invalid { .. }));
        assert!(err.to_string().contains("bad-one"), "{err}");
    }
}
