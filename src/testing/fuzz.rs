//! Request generation for fuzzers of gRPC services described by
//! descriptors: messages of any type whose fields hold boundary values
//! (empty, huge, negative, non-ASCII, names that exist and names that do
//! not), and mutations of valid messages that replace some of their fields
//! with such values. Every choice is read from a stream of bytes, so a
//! property-based test (whose engine shrinks the bytes) and a seeded
//! generator (`skiff-loadtest fuzz`) drive the same code.

use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

/// How deep generated messages nest.
const MAX_DEPTH: usize = 4;

/// The encoding of a message of type `desc` whose fields, as `choices`
/// pick them, hold boundary values.
pub fn boundary_request(desc: &MessageDescriptor, choices: &[u8]) -> Vec<u8> {
    let mut picks = choices.iter().copied().chain(std::iter::repeat(0));
    boundary_message(desc, &mut picks, 0).encode_to_vec()
}

/// A message of type `desc` whose fields, as `picks` choose, are unset or
/// hold boundary values.
pub fn boundary_message(
    desc: &MessageDescriptor,
    picks: &mut impl Iterator<Item = u8>,
    depth: usize,
) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let pick = picks.next().unwrap_or(0);
        if pick.is_multiple_of(3) {
            continue;
        }
        if let Some(value) = boundary_field(&field, pick, picks, depth) {
            msg.set_field(&field, value);
        }
    }
    msg
}

/// A boundary value for the whole of `field` (a list of two, a map of one
/// entry, or one value); `None` where none fits (a message too deep).
fn boundary_field(
    field: &FieldDescriptor,
    pick: u8,
    picks: &mut impl Iterator<Item = u8>,
    depth: usize,
) -> Option<Value> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return None;
        };
        let key = match entry.map_entry_key_field().kind() {
            Kind::String => MapKey::String(boundary_string(pick)),
            _ => return None,
        };
        let value = boundary_value(
            &entry.map_entry_value_field().kind(),
            picks.next().unwrap_or(0),
            picks,
            depth + 1,
        )?;
        return Some(Value::Map([(key, value)].into_iter().collect()));
    }
    let one = boundary_value(&field.kind(), pick, picks, depth)?;
    Some(if field.is_list() {
        Value::List(vec![one.clone(), one])
    } else {
        one
    })
}

/// A boundary value of `kind` as `pick` chooses (messages filled from
/// `picks`); `None` for a message nested deeper than generation goes.
pub fn boundary_value(
    kind: &Kind,
    pick: u8,
    picks: &mut impl Iterator<Item = u8>,
    depth: usize,
) -> Option<Value> {
    let i = usize::from(pick / 3);
    Some(match kind {
        Kind::String => Value::String(boundary_string(pick)),
        Kind::Bytes => Value::Bytes(vec![0xff; i % 3 * 100].into()),
        Kind::Bool => Value::Bool(pick.is_multiple_of(2)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32([0, -1, 1, i32::MIN, i32::MAX][i % 5])
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64([0, -1, 1, i64::MIN, i64::MAX][i % 5])
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32([0, 1, u32::MAX][i % 3]),
        Kind::Uint64 | Kind::Fixed64 => Value::U64([0, 1, u64::MAX][i % 3]),
        Kind::Float => Value::F32([0.0, -1.0, f32::NAN, f32::INFINITY][i % 4]),
        Kind::Double => Value::F64([0.0, -1.0, f64::NAN, f64::INFINITY][i % 4]),
        Kind::Enum(_) => Value::EnumNumber([0, 1, 2, 99, -1][i % 5]),
        Kind::Message(m) if depth < MAX_DEPTH => {
            Value::Message(boundary_message(m, picks, depth + 1))
        }
        Kind::Message(_) => return None,
    })
}

/// A boundary string: empty, a namespace and a name that exist, one that
/// does not, too long, negative, non-ASCII, a path, selector syntax, or
/// control characters.
pub fn boundary_string(pick: u8) -> String {
    match pick / 3 % 10 {
        0 => String::new(),
        1 => "default".into(),
        2 => "fuzz-target".into(),
        3 => "no-such-thing".into(),
        4 => "x".repeat(300),
        5 => "-1".into(),
        6 => "ünï¢ødé ✓".into(),
        7 => "../../etc/passwd".into(),
        8 => "a=b,c!=d,(".into(),
        _ => "\u{0}\u{7f}".into(),
    }
}

/// Replaces one to three fields anywhere in `msg` (nested messages, list
/// elements and map entries included) with boundary values, or clears
/// them, as `picks` choose: a valid request made slightly wrong.
pub fn mutate(msg: &mut DynamicMessage, picks: &mut impl Iterator<Item = u8>) {
    let times = 1 + usize::from(picks.next().unwrap_or(0) % 3);
    for _ in 0..times {
        mutate_one(msg, picks, 0);
    }
}

fn mutate_one(msg: &mut DynamicMessage, picks: &mut impl Iterator<Item = u8>, depth: usize) {
    let fields: Vec<FieldDescriptor> = msg.descriptor().fields().collect();
    if fields.is_empty() {
        return;
    }
    let pick = picks.next().unwrap_or(0);
    let field = &fields[usize::from(pick) % fields.len()];
    let action = picks.next().unwrap_or(0);
    // Go down into a set message (or a list element of messages) half the
    // time, so that deep fields are reached as often as shallow ones.
    if action.is_multiple_of(2) && depth < MAX_DEPTH && msg.has_field(field) {
        match msg.get_field_mut(field) {
            Value::Message(inner) => return mutate_one(inner, picks, depth + 1),
            Value::List(items) if !items.is_empty() => {
                let i = usize::from(picks.next().unwrap_or(0)) % items.len();
                if let Some(Value::Message(inner)) = items.get_mut(i) {
                    return mutate_one(inner, picks, depth + 1);
                }
            }
            _ => {}
        }
    }
    match action / 2 % 4 {
        0 => msg.clear_field(field),
        1 if field.is_list() => {
            // One more element holding a boundary value.
            if let Some(one) =
                boundary_value(&field.kind(), picks.next().unwrap_or(0), picks, depth)
                && let Value::List(items) = msg.get_field_mut(field)
            {
                items.push(one);
            }
        }
        _ => {
            let pick = picks.next().unwrap_or(1).max(1);
            if let Some(value) = boundary_field(field, pick, picks, depth) {
                msg.set_field(field, value);
            }
        }
    }
}

/// A gRPC codec that sends already-encoded request bytes as they are (what
/// a buggy client or an attacker puts on the wire) and returns responses
/// undecoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder of [`RawCodec`].
#[derive(Debug)]
pub struct RawEncoder;

/// Decoder of [`RawCodec`].
#[derive(Debug)]
pub struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, v.len());
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_desc() -> MessageDescriptor {
        crate::descriptor::pool()
            .get_message_by_name("skiff.core.v1.Pod")
            .expect("Pod in the pool")
    }

    #[test]
    fn boundary_messages_decode_as_their_type() {
        let desc = pod_desc();
        for seed in 0..=255u8 {
            let choices: Vec<u8> = (0..64).map(|i: u8| seed.wrapping_mul(31) ^ i).collect();
            let bytes = boundary_request(&desc, &choices);
            DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("decodes");
        }
    }

    #[test]
    fn a_mutation_changes_a_valid_message_and_keeps_its_type() {
        let desc = pod_desc();
        let valid = DynamicMessage::decode(
            desc.clone(),
            crate::testing::pod("default", "p")
                .encode_to_vec()
                .as_slice(),
        )
        .expect("decodes");
        let mut changed = 0;
        for seed in 0..=255u8 {
            let mut msg = valid.clone();
            let mut picks = (0..).map(|i: u32| seed.wrapping_add((i * 7) as u8));
            mutate(&mut msg, &mut picks);
            let bytes = msg.encode_to_vec();
            DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("decodes");
            changed += usize::from(msg != valid);
        }
        assert!(
            changed > 200,
            "only {changed} of 256 mutations changed the pod"
        );
    }
}
