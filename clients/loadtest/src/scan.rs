//! Reads the few fields the watch benchmarks need straight from a
//! message's bytes as tonic hands them over: no structs are built, nothing
//! is copied or allocated per event. The load generator shares the machine
//! with the server it measures, so what it spends per event caps what it
//! can observe; every target (Skiff's watch, its multiplexed watch, raw
//! etcd) is read this same way, so the comparison stays even.

use std::marker::PhantomData;

use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A field's value: a number (varint) or the bytes of a length-delimited
/// field (a nested message, a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// A length-delimited field's bytes.
    Bytes(&'a [u8]),
}

/// Calls `f` with each field of `msg` (tag, value) in order; fixed-width
/// fields are skipped. Fails on bytes that are not a message.
pub fn each_field<'a>(
    mut msg: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>),
) -> Result<(), Malformed> {
    while !msg.is_empty() {
        let (tag, wire_type) = decode_key(&mut msg)?;
        match wire_type {
            WireType::Varint => f(tag, Value::Varint(decode_varint(&mut msg)?)),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut msg)? as usize;
                if len > msg.len() {
                    return Err(Malformed("a field longer than its message"));
                }
                let (value, rest) = msg.split_at(len);
                f(tag, Value::Bytes(value));
                msg = rest;
            }
            WireType::SixtyFourBit => msg = msg.get(8..).ok_or_else(truncated)?,
            WireType::ThirtyTwoBit => msg = msg.get(4..).ok_or_else(truncated)?,
            WireType::StartGroup | WireType::EndGroup => {
                return Err(Malformed("a group (not expected here)"));
            }
        }
    }
    Ok(())
}

fn truncated() -> Malformed {
    Malformed("a truncated field")
}

/// Bytes that are not the message they should be: what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl From<prost::DecodeError> for Malformed {
    fn from(_: prost::DecodeError) -> Self {
        Malformed("a bad key or varint")
    }
}

/// The last value of length-delimited field `tag` in `msg` (as protobuf
/// merges it), if present.
pub fn bytes_field(msg: &[u8], tag: u32) -> Result<Option<&[u8]>, Malformed> {
    let mut found = None;
    each_field(msg, |t, v| {
        if let (true, Value::Bytes(b)) = (t == tag, v) {
            found = Some(b);
        }
    })?;
    Ok(found)
}

/// The resource version of an encoded object (`metadata` = 1,
/// `resource_version` = 5), 0 when it has none.
pub fn object_resource_version(object: &[u8]) -> Result<u64, Malformed> {
    let Some(meta) = bytes_field(object, 1)? else {
        return Ok(0);
    };
    Ok(bytes_field(meta, 5)?
        .and_then(|rv| std::str::from_utf8(rv).ok()?.parse().ok())
        .unwrap_or(0))
}

/// What a message scan produces from a message's bytes.
pub type ScanFn<T> = fn(&[u8]) -> Result<T, Malformed>;

/// A codec that encodes requests with prost and turns each response
/// message into `T` with a [`ScanFn`], reading it where it lies.
pub struct ScanCodec<Req, T> {
    scan: ScanFn<T>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, T> ScanCodec<Req, T> {
    /// Responses read by `scan`.
    pub fn new(scan: ScanFn<T>) -> Self {
        Self {
            scan,
            _req: PhantomData,
        }
    }
}

impl<Req, T> Codec for ScanCodec<Req, T>
where
    Req: prost::Message + Send + 'static,
    T: Send + 'static,
{
    type Encode = Req;
    type Decode = T;
    type Encoder = PlainEncoder<Req>;
    type Decoder = ScanDecoder<T>;

    fn encoder(&mut self) -> Self::Encoder {
        PlainEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ScanDecoder(self.scan)
    }
}

/// Encodes a request with prost.
pub struct PlainEncoder<Req>(PhantomData<fn(Req)>);

impl<Req: prost::Message> Encoder for PlainEncoder<Req> {
    type Item = Req;
    type Error = Status;

    fn encode(&mut self, item: Req, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

/// Reads a response with its [`ScanFn`].
pub struct ScanDecoder<T>(ScanFn<T>);

impl<T> Decoder for ScanDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        let len = src.remaining();
        // One message, contiguous in tonic's buffer.
        let chunk = src.chunk();
        let item = if chunk.len() >= len {
            (self.0)(&chunk[..len])
        } else {
            (self.0)(&src.copy_to_bytes(len))
        }
        .map_err(|e| Status::internal(format!("a response does not decode: {e}")))?;
        if src.has_remaining() {
            src.advance(src.remaining());
        }
        Ok(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use skiff::Resource;

    #[test]
    fn reads_a_watch_events_resource_version_as_prost_would() {
        let mut pod = skiff::api::core::v1::Pod::default();
        pod.meta_mut().name = "web-1".into();
        pod.meta_mut().resource_version = "4711".into();
        pod.meta_mut()
            .annotations
            .insert("pad".into(), "x".repeat(300));
        let event = skiff::wire::WatchEvent::new(skiff::api::meta::v1::EventType::Modified, pod);
        let bytes = event.encode_to_vec();
        let mut event_type = 0;
        let mut rv = 0;
        each_field(&bytes, |tag, v| match (tag, v) {
            (1, Value::Varint(t)) => event_type = t,
            (2, Value::Bytes(o)) => rv = object_resource_version(o).unwrap(),
            _ => {}
        })
        .unwrap();
        assert_eq!(event_type, 2);
        assert_eq!(rv, 4711);
    }

    #[test]
    fn refuses_bytes_that_are_not_a_message() {
        // Field 2, length 10, but only 3 bytes follow.
        assert!(each_field(&[0x12, 10, 1, 2, 3], |_, _| {}).is_err());
        assert!(bytes_field(&[0x12, 10, 1, 2, 3], 2).is_err());
        assert_eq!(object_resource_version(&[]).unwrap(), 0);
    }
}
