//! Live gRPC server reflection (v1 and v1alpha): the API's own services
//! plus the services of every kind a definition serves at the moment of
//! the question, so `grpcurl list` and `describe` show a defined kind as
//! soon as it is established and stop showing it when it goes.

use std::sync::Arc;

use prost_reflect::{DescriptorPool, FileDescriptor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::DefinedKinds;

/// What reflection answers from.
pub struct LiveReflection {
    api: DescriptorPool,
    services: Vec<String>,
    defined: Arc<DefinedKinds>,
}

/// One answer, whichever protocol version asked.
enum Answer {
    Files(Vec<Vec<u8>>),
    Services(Vec<String>),
    ExtensionNumbers(String),
}

/// One question, whichever protocol version asked.
enum Question {
    FileByName(String),
    Symbol(String),
    Extension,
    ExtensionNumbers(String),
    ListServices,
}

impl LiveReflection {
    /// Reflection over the API's descriptors and `services` (the API's own
    /// served services), plus what `defined` serves.
    pub fn new(
        services: Vec<String>,
        defined: Arc<DefinedKinds>,
    ) -> Result<Arc<Self>, prost_reflect::DescriptorError> {
        let mut api = DescriptorPool::decode(skiff::descriptor::FILE_DESCRIPTOR_SET)?;
        api.decode_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)?;
        api.decode_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)?;
        Ok(Arc::new(Self {
            api,
            services,
            defined,
        }))
    }

    fn file_by_name(&self, name: &str) -> Option<FileDescriptor> {
        let served = self.defined.current();
        served
            .pools()
            .find_map(|p| p.get_file_by_name(name))
            .or_else(|| self.api.get_file_by_name(name))
    }

    fn file_of_symbol(&self, symbol: &str) -> Option<FileDescriptor> {
        let served = self.defined.current();
        let find = |pool: &DescriptorPool| -> Option<FileDescriptor> {
            pool.get_service_by_name(symbol)
                .map(|s| s.parent_file())
                .or_else(|| pool.get_message_by_name(symbol).map(|m| m.parent_file()))
                .or_else(|| pool.get_enum_by_name(symbol).map(|e| e.parent_file()))
                .or_else(|| pool.get_extension_by_name(symbol).map(|e| e.parent_file()))
                .or_else(|| {
                    // A method: `package.Service.Method`.
                    let (service, _) = symbol.rsplit_once('.')?;
                    pool.get_service_by_name(service).map(|s| s.parent_file())
                })
        };
        // Defined kinds' own files first: the API's pool holds none of them.
        served.pools().find_map(find).or_else(|| find(&self.api))
    }

    fn answer(&self, q: Question) -> Result<Answer, Status> {
        match q {
            Question::FileByName(name) => self
                .file_by_name(&name)
                .map(|f| Answer::Files(vec![f.encode_to_vec()]))
                .ok_or_else(|| Status::not_found(format!("file {name:?} not found"))),
            Question::Symbol(symbol) => self
                .file_of_symbol(&symbol)
                .map(|f| Answer::Files(vec![f.encode_to_vec()]))
                .ok_or_else(|| Status::not_found(format!("symbol {symbol:?} not found"))),
            Question::Extension => Err(Status::not_found("extensions are not supported")),
            // grpcurl asks this of every message and expects an answer.
            Question::ExtensionNumbers(t) => Ok(Answer::ExtensionNumbers(t)),
            Question::ListServices => {
                let mut names = self.services.clone();
                names.extend(self.defined.current().by_service.keys().cloned());
                names.sort();
                Ok(Answer::Services(names))
            }
        }
    }
}

/// Implements one version of the reflection protocol over [`LiveReflection`].
macro_rules! reflection_version {
    ($module:ident, $server:ident) => {
        /// The reflection service of this protocol version.
        pub mod $module {
            use super::*;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$module as pb;

            /// Serves this version over `state`.
            pub fn service(
                state: Arc<LiveReflection>,
            ) -> pb::server_reflection_server::ServerReflectionServer<Service> {
                pb::server_reflection_server::ServerReflectionServer::new(Service(state))
            }

            /// The service.
            pub struct Service(Arc<LiveReflection>);

            #[tonic::async_trait]
            impl pb::server_reflection_server::ServerReflection for Service {
                type ServerReflectionInfoStream =
                    ReceiverStream<Result<pb::ServerReflectionResponse, Status>>;

                async fn server_reflection_info(
                    &self,
                    request: Request<Streaming<pb::ServerReflectionRequest>>,
                ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                    let mut requests = request.into_inner();
                    let (tx, rx) = mpsc::channel(4);
                    let state = self.0.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(req)) = requests.message().await {
                            let question = match req.message_request.clone() {
                                Some(MessageRequest::FileByFilename(n)) => Question::FileByName(n),
                                Some(MessageRequest::FileContainingSymbol(s)) => {
                                    Question::Symbol(s)
                                }
                                Some(MessageRequest::FileContainingExtension(_)) => {
                                    Question::Extension
                                }
                                Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                                    Question::ExtensionNumbers(t)
                                }
                                Some(MessageRequest::ListServices(_)) => Question::ListServices,
                                None => {
                                    let _ = tx
                                        .send(Err(Status::invalid_argument("no message_request")))
                                        .await;
                                    return;
                                }
                            };
                            let response = match state.answer(question) {
                                Ok(Answer::Files(files)) => {
                                    MessageResponse::FileDescriptorResponse(
                                        pb::FileDescriptorResponse {
                                            file_descriptor_proto: files,
                                        },
                                    )
                                }
                                Ok(Answer::Services(names)) => {
                                    MessageResponse::ListServicesResponse(pb::ListServiceResponse {
                                        service: names
                                            .into_iter()
                                            .map(|name| pb::ServiceResponse { name })
                                            .collect(),
                                    })
                                }
                                Ok(Answer::ExtensionNumbers(t)) => {
                                    MessageResponse::AllExtensionNumbersResponse(
                                        pb::ExtensionNumberResponse {
                                            base_type_name: t,
                                            extension_number: Vec::new(),
                                        },
                                    )
                                }
                                Err(status) => MessageResponse::ErrorResponse(pb::ErrorResponse {
                                    error_code: status.code() as i32,
                                    error_message: status.message().to_owned(),
                                }),
                            };
                            let out = pb::ServerReflectionResponse {
                                valid_host: req.host.clone(),
                                original_request: Some(req),
                                message_response: Some(response),
                            };
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok(Response::new(ReceiverStream::new(rx)))
                }
            }
        }
    };
}

reflection_version!(v1, ServerReflection);
reflection_version!(v1alpha, ServerReflection);
