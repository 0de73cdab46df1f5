//! Watch events and list responses that can carry objects encoded once.
//!
//! `build.rs` maps every `Watch<Kind>sResponse` and `List<Kind>sResponse`
//! message to these types. On the wire they are the ordinary messages
//! (`type = 1, object = 2` and `metadata = 1, items = 2`), so generated
//! clients in any language and grpcurl see nothing unusual; on the server
//! they can hold bytes produced once and shared by every receiver.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::api::meta::v1::{EventType, ListMeta};

/// One change in a watch stream.
#[derive(Clone, PartialEq, Default)]
pub struct WatchEvent<K> {
    /// What happened, as an [`EventType`] number.
    pub r#type: i32,
    /// The object after the change (before it, for DELETED).
    pub object: Option<K>,
    /// The whole message, already encoded; when set it is what goes on the
    /// wire. With `framed`, it starts with the 5-byte gRPC message prefix.
    encoded: Option<Bytes>,
    framed: bool,
}

impl<K> WatchEvent<K> {
    /// An event holding a decoded object.
    pub fn new(event_type: EventType, object: K) -> Self {
        Self {
            r#type: event_type as i32,
            object: Some(object),
            encoded: None,
            framed: false,
        }
    }

    /// An event of type number `event_type` (as received) holding `object`.
    pub fn from_parts(event_type: i32, object: Option<K>) -> Self {
        Self {
            r#type: event_type,
            object,
            encoded: None,
            framed: false,
        }
    }

    /// An event whose message bytes were produced by [`encode_watch_event`].
    pub fn pre_encoded(bytes: Bytes) -> Self {
        Self {
            r#type: 0,
            object: None,
            encoded: Some(bytes),
            framed: false,
        }
    }

    /// An event whose gRPC message frame (prefix and message) was produced
    /// by [`frame_watch_event`] or [`grpc_frame`]: a server writes it as it is.
    pub fn pre_framed(frame: Bytes) -> Self {
        debug_assert!(
            frame.len() >= GRPC_PREFIX,
            "a gRPC frame has a 5-byte prefix"
        );
        Self {
            r#type: 0,
            object: None,
            encoded: Some(frame),
            framed: true,
        }
    }

    /// The event's whole gRPC message frame, if it was built as one.
    pub fn grpc_frame(&self) -> Option<&Bytes> {
        self.encoded.as_ref().filter(|_| self.framed)
    }

    /// The encoded message, without a gRPC prefix, if there is one.
    fn message_bytes(&self) -> Option<&[u8]> {
        let bytes = self.encoded.as_ref()?;
        Some(if self.framed {
            &bytes[GRPC_PREFIX..]
        } else {
            &bytes[..]
        })
    }

    /// The event's type number and its object's encoding, sharing the
    /// bytes of an event encoded once (no copy) — what the multiplexed
    /// watch packs into an [`Any`].
    pub fn into_type_and_object(self) -> Result<(i32, Bytes), DecodeError>
    where
        K: Message,
    {
        let Some(bytes) = self.encoded else {
            let object = self.object.map(|o| Bytes::from(o.encode_to_vec()));
            return Ok((self.r#type, object.unwrap_or_default()));
        };
        let message = if self.framed {
            bytes.slice(GRPC_PREFIX..)
        } else {
            bytes
        };
        split_watch_event(message)
    }

    /// The event type, or `Unspecified` for unknown numbers.
    pub fn event_type(&self) -> EventType {
        EventType::try_from(self.r#type).unwrap_or(EventType::Unspecified)
    }
}

/// An encoded watch event's type number and its object's encoding, a
/// slice of `message` (no copy).
fn split_watch_event(message: Bytes) -> Result<(i32, Bytes), DecodeError> {
    let (event_type, object) = watch_event_parts(&message)?;
    let object = if object.is_empty() {
        Bytes::new()
    } else {
        message.slice_ref(object)
    };
    Ok((event_type, object))
}

/// An encoded watch event's (`WatchEvent` message, no gRPC prefix) type
/// number and its object's encoding, where they lie in `message`.
pub fn watch_event_parts(message: &[u8]) -> Result<(i32, &[u8]), DecodeError> {
    let (mut event_type, mut object): (i32, &[u8]) = (0, &[]);
    let mut rest = message;
    while !rest.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut rest)?;
        match (tag, wire_type) {
            (1, WireType::Varint) => {
                event_type = prost::encoding::decode_varint(&mut rest)? as i32;
            }
            (2, WireType::LengthDelimited) => {
                let mut field = rest;
                // Checks the length against what is there.
                prost::encoding::skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
                let len = prost::encoding::decode_varint(&mut field)? as usize;
                object = &field[..len];
            }
            _ => prost::encoding::skip_field(wire_type, tag, &mut rest, DecodeContext::default())?,
        }
    }
    Ok((event_type, object))
}

/// A watch event on its way out of a server: small enough to pass through
/// stream adapters by value (a decoded object is kilobytes, and every
/// adapter of a watch stream moves each item it yields).
#[derive(Clone)]
pub enum OutgoingEvent<K> {
    /// A whole gRPC message (5-byte prefix, then the event), encoded once
    /// and shared by every watcher that receives it.
    Framed(Bytes),
    /// An event still to be encoded.
    Event(Box<WatchEvent<K>>),
}

impl<K> From<WatchEvent<K>> for OutgoingEvent<K> {
    fn from(event: WatchEvent<K>) -> Self {
        match event.grpc_frame() {
            Some(frame) => OutgoingEvent::Framed(frame.clone()),
            None => OutgoingEvent::Event(Box::new(event)),
        }
    }
}

impl<K> OutgoingEvent<K> {
    /// The event as a [`WatchEvent`] (the frame shared, not copied).
    pub fn into_event(self) -> WatchEvent<K> {
        match self {
            OutgoingEvent::Framed(frame) => WatchEvent::pre_framed(frame),
            OutgoingEvent::Event(event) => *event,
        }
    }

    /// The event's gRPC message, prefix included (encoded here when it was
    /// not already).
    pub fn grpc_frame(&self) -> Bytes
    where
        K: Message + Default,
    {
        match self {
            OutgoingEvent::Framed(frame) => frame.clone(),
            OutgoingEvent::Event(event) => match event.grpc_frame() {
                Some(frame) => frame.clone(),
                None => grpc_frame(&event.encode_to_vec()),
            },
        }
    }

    /// [`grpc_frame`](Self::grpc_frame), taking the shared frame rather
    /// than cloning it.
    pub fn into_grpc_frame(self) -> Bytes
    where
        K: Message + Default,
    {
        match self {
            OutgoingEvent::Framed(frame) => frame,
            OutgoingEvent::Event(event) => match (event.framed, event.encoded) {
                (true, Some(frame)) => frame,
                (_, encoded) => {
                    let event = WatchEvent { encoded, ..*event };
                    grpc_frame(&event.encode_to_vec())
                }
            },
        }
    }

    /// The event's type number and its object's encoding; see
    /// [`WatchEvent::into_type_and_object`].
    pub fn into_type_and_object(self) -> Result<(i32, Bytes), DecodeError>
    where
        K: Message,
    {
        match self {
            // Sliced where it lies: building a `WatchEvent` (an inline
            // object's worth of bytes) per delivery showed in profiles.
            OutgoingEvent::Framed(frame) => split_watch_event(frame.slice(GRPC_PREFIX..)),
            OutgoingEvent::Event(event) => event.into_type_and_object(),
        }
    }
}

/// `google.protobuf.Any`: a message packed with its type's name. The value
/// is `Bytes` and the type URL may be static, so one encoding of an object
/// is shared by every response that carries it, with nothing allocated.
#[derive(Clone, PartialEq, Default)]
pub struct Any {
    /// `type.googleapis.com/` and the message's full name.
    pub type_url: Cow<'static, str>,
    /// The message's encoding.
    pub value: Bytes,
}

/// The prefix of every [`Any::type_url`] Skiff writes.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// The type URL of `message_name`, made once per name for the life of the
/// process (the names are the API's kinds: a bounded set).
pub fn type_url_of(message_name: &str) -> &'static str {
    static URLS: std::sync::OnceLock<std::sync::Mutex<HashMap<String, &'static str>>> =
        std::sync::OnceLock::new();
    let mut urls = URLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    urls.entry(message_name.to_owned())
        .or_insert_with(|| Box::leak(format!("{TYPE_URL_PREFIX}{message_name}").into_boxed_str()))
}

impl Any {
    /// Packs `value`, the encoding of a `message_name` message.
    pub fn from_encoded(message_name: &str, value: Bytes) -> Self {
        Self {
            type_url: Cow::Borrowed(type_url_of(message_name)),
            value,
        }
    }

    /// The packed message's full name (the type URL after its last `/`).
    pub fn message_name(&self) -> &str {
        self.type_url
            .rsplit_once('/')
            .map_or(&self.type_url[..], |(_, name)| name)
    }

    /// Decodes the packed message as `M`, which must be `message_name`.
    pub fn unpack<M: Message + Default>(&self, message_name: &str) -> Result<M, UnpackError> {
        if self.message_name() != message_name {
            return Err(UnpackError::OtherType {
                expected: message_name.to_owned(),
                type_url: self.type_url.to_string(),
            });
        }
        Ok(M::decode(self.value.clone())?)
    }
}

impl fmt::Debug for Any {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Any")
            .field("type_url", &self.type_url)
            .field("value_len", &self.value.len())
            .finish()
    }
}

impl Message for Any {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.type_url.is_empty() {
            prost::encoding::encode_key(1, WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(self.type_url.len() as u64, buf);
            buf.put_slice(self.type_url.as_bytes());
        }
        if !self.value.is_empty() {
            prost::encoding::bytes::encode(2, &self.value, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                let mut url = std::mem::take(&mut self.type_url).into_owned();
                let merged = prost::encoding::string::merge(wire_type, &mut url, buf, ctx);
                self.type_url = Cow::Owned(url);
                merged
            }
            2 => prost::encoding::bytes::merge(wire_type, &mut self.value, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let url = self.type_url.len();
        (if url == 0 {
            0
        } else {
            prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(url as u64) + url
        }) + if self.value.is_empty() {
            0
        } else {
            prost::encoding::bytes::encoded_len(2, &self.value)
        }
    }

    fn clear(&mut self) {
        self.type_url = Cow::Borrowed("");
        self.value.clear();
    }
}

/// Why an [`Any`] did not unpack.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// It holds another message type.
    #[error("expected a packed {expected}, got {type_url}")]
    OtherType {
        /// The message name asked for.
        expected: String,
        /// What it holds.
        type_url: String,
    },
    /// Its bytes are not that message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Initial size of the buffer each call's stream encodes and decodes
/// into (tonic's default is 8 KiB). Buffers grow as messages need; a small
/// start keeps an idle watch, which holds one for its whole life, cheap.
pub const STREAM_BUFFER: usize = 512;

/// Streams yield to the transport after this many encoded bytes (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The protobuf codec of every Skiff service: prost's, with
/// [`STREAM_BUFFER`]-sized buffers.
pub struct Codec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(
            STREAM_BUFFER,
            YIELD_THRESHOLD,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(tonic_prost::ProstDecoder::new(
            tonic::codec::BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD),
        ))
    }
}

/// prost's decoder, answering bytes that are not the message (invalid
/// UTF-8 in a string, a wrong wire type, a truncated field) with
/// INVALID_ARGUMENT rather than gRPC's default INTERNAL: on a server the
/// sender's bytes are at fault, and DESIGN.md gives an invalid request
/// INVALID_ARGUMENT.
pub struct Decoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        tonic::codec::Decoder::decode(&mut self.0, buf).map_err(|s| {
            if s.code() == tonic::Code::Internal {
                tonic::Status::invalid_argument(format!(
                    "the message does not decode as protobuf: {}",
                    s.message()
                ))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::Decoder::buffer_settings(&self.0)
    }
}

/// Encodes a watch event message from its type and the object's encoding.
pub fn encode_watch_event(event_type: EventType, object: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(object.len() + 8);
    write_watch_event(event_type, object, &mut buf);
    Bytes::from(buf)
}

fn write_watch_event(event_type: EventType, object: &[u8], buf: &mut Vec<u8>) {
    prost::encoding::int32::encode(1, &(event_type as i32), buf);
    prost::encoding::encode_key(2, WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(object.len() as u64, buf);
    buf.extend_from_slice(object);
}

/// Length of the gRPC message prefix: a compression flag and a 4-byte length.
pub const GRPC_PREFIX: usize = 5;

/// Encodes a watch event as a whole gRPC message frame (uncompressed
/// prefix, then the message), so that a server can write it to any number
/// of streams as it is.
pub fn frame_watch_event(event_type: EventType, object: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(object.len() + 8 + GRPC_PREFIX);
    buf.extend_from_slice(&[0; GRPC_PREFIX]);
    write_watch_event(event_type, object, &mut buf);
    set_prefix(&mut buf);
    Bytes::from(buf)
}

/// Frames an encoded message as a gRPC message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(message.len() + GRPC_PREFIX);
    buf.extend_from_slice(&[0; GRPC_PREFIX]);
    buf.extend_from_slice(message);
    set_prefix(&mut buf);
    Bytes::from(buf)
}

fn set_prefix(buf: &mut [u8]) {
    let len = u32::try_from(buf.len() - GRPC_PREFIX).expect("a message under 4 GiB");
    buf[0] = 0;
    buf[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
}

impl<K: fmt::Debug> fmt::Debug for WatchEvent<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchEvent")
            .field("type", &self.r#type)
            .field("object", &self.object)
            .field("encoded_len", &self.encoded.as_ref().map(Bytes::len))
            .finish()
    }
}

impl<K: Message + Default> Message for WatchEvent<K> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = self.message_bytes() {
            buf.put_slice(bytes);
            return;
        }
        if self.r#type != 0 {
            prost::encoding::int32::encode(1, &self.r#type, buf);
        }
        if let Some(obj) = &self.object {
            prost::encoding::message::encode(2, obj, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => prost::encoding::int32::merge(wire_type, &mut self.r#type, buf, ctx),
            2 => prost::encoding::message::merge(
                wire_type,
                self.object.get_or_insert_with(K::default),
                buf,
                ctx,
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(bytes) = self.message_bytes() {
            return bytes.len();
        }
        let mut len = 0;
        if self.r#type != 0 {
            len += prost::encoding::int32::encoded_len(1, &self.r#type);
        }
        if let Some(obj) = &self.object {
            len += prost::encoding::message::encoded_len(2, obj);
        }
        len
    }

    fn clear(&mut self) {
        self.r#type = 0;
        self.object = None;
        self.encoded = None;
        self.framed = false;
    }
}

/// One page of a list.
#[derive(Clone, PartialEq, Default)]
pub struct ListResponse<K> {
    /// Revision and paging.
    pub metadata: Option<ListMeta>,
    /// Decoded items (what a client receives).
    pub items: Vec<K>,
    /// Items already encoded, sent after `items` (what a cache serves).
    encoded_items: Vec<Bytes>,
}

impl<K> ListResponse<K> {
    /// A response of decoded items.
    pub fn new(metadata: ListMeta, items: Vec<K>) -> Self {
        Self {
            metadata: Some(metadata),
            items,
            encoded_items: Vec::new(),
        }
    }

    /// A response of items already encoded as `K` messages.
    pub fn pre_encoded(metadata: ListMeta, encoded_items: Vec<Bytes>) -> Self {
        Self {
            metadata: Some(metadata),
            items: Vec::new(),
            encoded_items,
        }
    }

    /// Number of items, decoded or encoded.
    pub fn len(&self) -> usize {
        self.items.len() + self.encoded_items.len()
    }

    /// Whether the page holds no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list metadata (default if unset).
    pub fn list_meta(&self) -> ListMeta {
        self.metadata.clone().unwrap_or_default()
    }

    /// Every item as an object, decoding those held encoded.
    pub fn into_objects(self) -> Result<Vec<K>, prost::DecodeError>
    where
        K: Message + Default,
    {
        let mut out = self.items;
        for bytes in self.encoded_items {
            out.push(K::decode(bytes)?);
        }
        Ok(out)
    }
}

impl<K: fmt::Debug> fmt::Debug for ListResponse<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListResponse")
            .field("metadata", &self.metadata)
            .field("items", &self.items)
            .field("encoded_items", &self.encoded_items.len())
            .finish()
    }
}

impl<K: Message + Default> Message for ListResponse<K> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(meta) = &self.metadata {
            prost::encoding::message::encode(1, meta, buf);
        }
        for item in &self.items {
            prost::encoding::message::encode(2, item, buf);
        }
        for item in &self.encoded_items {
            prost::encoding::encode_key(2, WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(item.len() as u64, buf);
            buf.put_slice(item);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => prost::encoding::message::merge(
                wire_type,
                self.metadata.get_or_insert_with(ListMeta::default),
                buf,
                ctx,
            ),
            2 => prost::encoding::message::merge_repeated(wire_type, &mut self.items, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let mut len = 0;
        if let Some(meta) = &self.metadata {
            len += prost::encoding::message::encoded_len(1, meta);
        }
        len += prost::encoding::message::encoded_len_repeated(2, &self.items);
        for item in &self.encoded_items {
            len += prost::encoding::key_len(2)
                + prost::encoding::encoded_len_varint(item.len() as u64)
                + item.len();
        }
        len
    }

    fn clear(&mut self) {
        self.metadata = None;
        self.items.clear();
        self.encoded_items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::core::v1::Pod;
    use crate::api::meta::v1::ObjectMeta;
    use crate::resource::Resource;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        *p.meta_mut() = ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            resource_version: "7".into(),
            ..Default::default()
        };
        p
    }

    #[test]
    fn pre_encoded_watch_event_decodes_like_a_plain_one() {
        let p = pod("web");
        let plain = WatchEvent::new(EventType::Added, p.clone()).encode_to_vec();
        let once = WatchEvent::<Pod>::pre_encoded(encode_watch_event(
            EventType::Added,
            &p.encode_to_vec(),
        ));
        assert_eq!(once.encode_to_vec(), plain);
        let decoded = WatchEvent::<Pod>::decode(plain.as_slice()).unwrap();
        assert_eq!(decoded.event_type(), EventType::Added);
        assert_eq!(decoded.object.unwrap(), p);
    }

    #[test]
    fn pre_encoded_list_decodes_like_a_plain_one() {
        let items = vec![pod("a"), pod("b")];
        let meta = ListMeta {
            resource_version: "9".into(),
            ..Default::default()
        };
        let plain = ListResponse::new(meta.clone(), items.clone()).encode_to_vec();
        let encoded = items
            .iter()
            .map(|p| Bytes::from(p.encode_to_vec()))
            .collect();
        let once = ListResponse::<Pod>::pre_encoded(meta, encoded);
        assert_eq!(once.encoded_len(), plain.len());
        assert_eq!(once.encode_to_vec(), plain);
        let decoded = ListResponse::<Pod>::decode(plain.as_slice()).unwrap();
        assert_eq!(decoded.items, items);
    }

    #[test]
    fn an_events_object_bytes_are_shared_not_re_encoded() {
        let p = pod("a");
        let frame = frame_watch_event(EventType::Deleted, &p.encode_to_vec());
        let (t, object) = WatchEvent::<Pod>::pre_framed(frame.clone())
            .into_type_and_object()
            .unwrap();
        assert_eq!(t, EventType::Deleted as i32);
        assert_eq!(object, p.encode_to_vec());
        // A slice of the frame: the same memory.
        assert!(frame.as_ptr_range().contains(&object.as_ptr()));
        let plain = WatchEvent::new(EventType::Added, p.clone());
        assert_eq!(
            plain.into_type_and_object().unwrap(),
            (EventType::Added as i32, Bytes::from(p.encode_to_vec()))
        );
    }

    #[test]
    fn an_outgoing_event_gives_up_its_shared_frame_or_frames_its_decoded_event() {
        let p = pod("a");
        let frame = frame_watch_event(EventType::Modified, &p.encode_to_vec());
        let taken = OutgoingEvent::<Pod>::Framed(frame.clone()).into_grpc_frame();
        assert_eq!(taken.as_ptr(), frame.as_ptr(), "the same memory");
        let decoded: OutgoingEvent<Pod> = WatchEvent::new(EventType::Modified, p.clone()).into();
        assert_eq!(decoded.clone().into_grpc_frame(), decoded.grpc_frame());
        assert_eq!(decoded.into_grpc_frame(), frame);
        let (t, object) = watch_event_parts(&frame[GRPC_PREFIX..]).unwrap();
        assert_eq!(
            (t, object),
            (EventType::Modified as i32, &p.encode_to_vec()[..])
        );
        // A length beyond the message is an error, not a panic.
        let mut cut = frame[GRPC_PREFIX..].to_vec();
        cut.truncate(cut.len() - 1);
        assert!(watch_event_parts(&cut).is_err());
    }

    #[test]
    fn any_round_trips_like_protobufs_own_and_checks_the_type() {
        let p = pod("a");
        let any = Any::from_encoded("skiff.core.v1.Pod", p.encode_to_vec().into());
        let reference = prost_types::Any {
            type_url: any.type_url.to_string(),
            value: p.encode_to_vec(),
        };
        assert_eq!(any.encode_to_vec(), reference.encode_to_vec());
        let back = Any::decode(&reference.encode_to_vec()[..]).unwrap();
        assert_eq!(back.unpack::<Pod>("skiff.core.v1.Pod").unwrap(), p);
        let wrong = back.unpack::<Pod>("skiff.core.v1.Node").unwrap_err();
        assert!(wrong.to_string().contains("skiff.core.v1.Node"), "{wrong}");
    }

    #[test]
    fn a_pre_framed_event_is_a_grpc_frame_and_encodes_like_a_plain_one() {
        let p = pod("a");
        let plain = WatchEvent::new(EventType::Modified, p.clone()).encode_to_vec();
        let frame = frame_watch_event(EventType::Modified, &p.encode_to_vec());
        assert_eq!(frame[0], 0, "uncompressed");
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            plain.len()
        );
        assert_eq!(&frame[GRPC_PREFIX..], plain.as_slice());
        let event = WatchEvent::<Pod>::pre_framed(frame.clone());
        assert_eq!(event.grpc_frame(), Some(&frame));
        assert_eq!(event.encoded_len(), plain.len());
        assert_eq!(event.encode_to_vec(), plain);
        assert_eq!(grpc_frame(&plain), frame);
        assert_eq!(
            WatchEvent::<Pod>::pre_encoded(Bytes::from(plain)).grpc_frame(),
            None
        );
    }
}
