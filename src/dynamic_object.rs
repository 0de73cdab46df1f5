//! An object of a kind defined at run time (by a `ResourceDefinition`):
//! its `metadata` (field 1, the one field every kind shares) decoded, and
//! every other field kept as its protobuf encoding. The server stores,
//! caches and serves such objects without knowing their schema; where a
//! rule needs the schema (the status field, field selectors), the kind's
//! definition supplies it.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, decode_key, encode_key};
use prost::{DecodeError, Message};

use crate::api::meta::v1::ObjectMeta;
use crate::resource::{KindInfo, Resource, empty_meta};

/// An object of a user-defined kind: decoded metadata, the rest encoded.
#[derive(Clone, Default, PartialEq)]
pub struct DynamicObject {
    /// Field 1: the object's metadata.
    pub metadata: Option<ObjectMeta>,
    /// Every other field, encoded (keys included) in the order received.
    pub body: Bytes,
}

impl std::fmt::Debug for DynamicObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicObject")
            .field("metadata", &self.metadata)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// One field of an encoded message: its number and its whole encoding
/// (key included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField {
    /// Field number.
    pub number: u32,
    /// The field's key and value as encoded.
    pub encoded: Bytes,
}

/// Splits an encoded message into its fields, in order.
pub fn raw_fields(mut body: Bytes) -> Result<Vec<RawField>, DecodeError> {
    let mut out = Vec::new();
    while body.has_remaining() {
        let total = body.len();
        let mut probe = body.clone();
        let (number, wire_type) = decode_key(&mut probe)?;
        prost::encoding::skip_field(wire_type, number, &mut probe, DecodeContext::default())?;
        let used = total - probe.len();
        out.push(RawField {
            number,
            encoded: body.split_to(used),
        });
    }
    Ok(out)
}

impl DynamicObject {
    /// The body without field `number` (every occurrence of it).
    pub fn body_without(&self, number: u32) -> Bytes {
        match raw_fields(self.body.clone()) {
            Ok(fields) if fields.iter().any(|f| f.number == number) => {
                let mut out = Vec::with_capacity(self.body.len());
                for f in fields.into_iter().filter(|f| f.number != number) {
                    out.extend_from_slice(&f.encoded);
                }
                Bytes::from(out)
            }
            _ => self.body.clone(),
        }
    }

    /// Field `number` of the body as encoded (every occurrence, in order).
    pub fn field_encoded(&self, number: u32) -> Bytes {
        match raw_fields(self.body.clone()) {
            Ok(fields) => {
                let mut out = Vec::new();
                for f in fields.into_iter().filter(|f| f.number == number) {
                    out.extend_from_slice(&f.encoded);
                }
                Bytes::from(out)
            }
            Err(_) => Bytes::new(),
        }
    }

    /// Replaces field `number` with `other`'s (the status of a kind whose
    /// status is that field).
    pub fn copy_field_from(&mut self, other: &Self, number: u32) {
        let mut out = self.body_without(number).to_vec();
        out.extend_from_slice(&other.field_encoded(number));
        self.body = Bytes::from(out);
    }

    /// Removes field `number`.
    pub fn clear_field(&mut self, number: u32) {
        self.body = self.body_without(number);
    }
}

/// Placeholder facts: a `DynamicObject`'s real kind is the definition's,
/// which the server carries beside the type.
const DYNAMIC_INFO: KindInfo = KindInfo {
    kind: "DynamicObject",
    plural: "dynamicobjects",
    group: "",
    version: "v1",
    api_version: "v1",
    namespaced: true,
    has_status: false,
    short_names: &[],
    message_name: "",
    service_name: "",
};

impl Resource for DynamicObject {
    const INFO: KindInfo = DYNAMIC_INFO;
    const SELECTABLE_FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace"];

    fn meta(&self) -> &ObjectMeta {
        self.metadata.as_ref().unwrap_or_else(|| empty_meta())
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.metadata.get_or_insert_with(ObjectMeta::default)
    }

    /// Without the schema, the whole body is the spec.
    fn spec_eq(&self, other: &Self) -> bool {
        self.body == other.body
    }

    /// Without the schema there is no status to copy.
    fn copy_status_from(&mut self, other: &Self) {
        let _ = other;
    }

    /// Without the schema there is no status to clear.
    fn clear_status(&mut self) {}

    fn field(&self, path: &str) -> Option<Cow<'_, str>> {
        match path {
            "metadata.name" => Some(Cow::Borrowed(&self.meta().name)),
            "metadata.namespace" => Some(Cow::Borrowed(&self.meta().namespace)),
            _ => None,
        }
    }
}

impl Message for DynamicObject {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(meta) = &self.metadata {
            prost::encoding::message::encode(1, meta, buf);
        }
        buf.put_slice(&self.body);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            return prost::encoding::message::merge(
                wire_type,
                self.metadata.get_or_insert_with(ObjectMeta::default),
                buf,
                ctx,
            );
        }
        // Keep the field as encoded: its key, then its value's bytes.
        let mut body = bytes::BytesMut::from(std::mem::take(&mut self.body));
        let mut field = Vec::new();
        encode_key(tag, wire_type, &mut field);
        copy_value(wire_type, tag, buf, &mut field, ctx)?;
        body.extend_from_slice(&field);
        self.body = body.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.metadata
            .as_ref()
            .map_or(0, |m| prost::encoding::message::encoded_len(1, m))
            + self.body.len()
    }

    fn clear(&mut self) {
        self.metadata = None;
        self.body = Bytes::new();
    }
}

/// Copies one field's value (after its key) from `buf` to `out`.
#[allow(
    deprecated,
    reason = "prost offers no other way to make a DecodeError; these are the messages its own decoder gives"
)]
fn copy_value(
    wire_type: WireType,
    tag: u32,
    buf: &mut impl Buf,
    out: &mut Vec<u8>,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    match wire_type {
        WireType::Varint => {
            let v = prost::encoding::decode_varint(buf)?;
            prost::encoding::encode_varint(v, out);
        }
        WireType::SixtyFourBit => {
            if buf.remaining() < 8 {
                return Err(DecodeError::new("buffer underflow"));
            }
            out.extend_from_slice(&buf.copy_to_bytes(8));
        }
        WireType::ThirtyTwoBit => {
            if buf.remaining() < 4 {
                return Err(DecodeError::new("buffer underflow"));
            }
            out.extend_from_slice(&buf.copy_to_bytes(4));
        }
        WireType::LengthDelimited => {
            let len = prost::encoding::decode_varint(buf)?;
            if (buf.remaining() as u64) < len {
                return Err(DecodeError::new("buffer underflow"));
            }
            prost::encoding::encode_varint(len, out);
            out.extend_from_slice(&buf.copy_to_bytes(len as usize));
        }
        WireType::StartGroup => {
            // A group: copy nested fields up to the matching end group.
            loop {
                let (inner_tag, inner_type) = decode_key(buf)?;
                encode_key(inner_tag, inner_type, out);
                if inner_type == WireType::EndGroup {
                    if inner_tag != tag {
                        return Err(DecodeError::new("unexpected end group tag"));
                    }
                    break;
                }
                copy_value(inner_type, inner_tag, buf, out, ctx.clone())?;
            }
        }
        WireType::EndGroup => return Err(DecodeError::new("unexpected end group tag")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        // metadata {name: "w1"} = 1, spec (bytes) = 2, status = 3, a varint = 4.
        let meta = ObjectMeta {
            name: "w1".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        prost::encoding::message::encode(1, &meta, &mut out);
        prost::encoding::bytes::encode(2, &b"spec".to_vec(), &mut out);
        prost::encoding::bytes::encode(3, &b"status".to_vec(), &mut out);
        prost::encoding::uint64::encode(4, &300, &mut out);
        prost::encoding::fixed32::encode(5, &7, &mut out);
        out
    }

    #[test]
    fn a_dynamic_object_decodes_its_metadata_and_reencodes_every_other_field_unchanged() {
        let bytes = sample();
        let obj = DynamicObject::decode(&bytes[..]).unwrap();
        assert_eq!(obj.meta().name, "w1");
        assert_eq!(obj.encode_to_vec(), bytes);
        assert_eq!(obj.encoded_len(), bytes.len());
        let numbers: Vec<u32> = raw_fields(obj.body.clone())
            .unwrap()
            .iter()
            .map(|f| f.number)
            .collect();
        assert_eq!(numbers, vec![2, 3, 4, 5]);
    }

    #[test]
    fn a_field_of_a_dynamic_object_is_copied_and_cleared_by_number() {
        let obj = DynamicObject::decode(&sample()[..]).unwrap();
        let mut other = obj.clone();
        other.clear_field(3);
        assert!(other.field_encoded(3).is_empty());
        assert_eq!(other.body_without(3), obj.body_without(3));
        other.copy_field_from(&obj, 3);
        assert_eq!(other.field_encoded(3), obj.field_encoded(3));
    }

    #[test]
    fn a_truncated_dynamic_object_is_refused() {
        let bytes = sample();
        assert!(DynamicObject::decode(&bytes[..bytes.len() - 2]).is_err());
    }
}
