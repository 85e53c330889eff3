//! `tls-server CERT KEY`: a thread-per-connection HTTPS/1.1 server on the `openssl` crate,
//! for the tracer's TLS tests. The workspace build links the system's libssl.so.3;
//! `cargo xtask test` also builds it with Debian's libssl.a linked in, as
//! `tls-server-static` (no libssl.so mapped: the SSL_* functions are in the executable).
//! Each connection does an explicit `SSL_accept`, then serves keep-alive requests with
//! `SSL_read`/`SSL_write`: `/` answers at once, `/sleep?ms=N` sleeps first.
//!
//! Prints `listening 127.0.0.1:PORT pid PID` once ready.

use std::{io::Write as _, net::TcpStream, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream};
use tracer_tests::http;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cert, key] = args.as_slice() else {
        anyhow::bail!("usage: tls-server CERT KEY");
    };
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    builder.set_certificate_chain_file(cert)?;
    builder.set_private_key_file(key, SslFiletype::PEM)?;
    let acceptor = Arc::new(builder.build());
    let listener = tracer_tests::listen_and_announce().context("listen")?;
    for stream in listener.incoming().map_while(Result::ok) {
        let acceptor = Arc::clone(&acceptor);
        std::thread::spawn(move || {
            if let Err(e) = serve(&acceptor, stream) {
                eprintln!("tls-server: connection: {e:#}");
            }
        });
    }
    Ok(())
}

fn serve(acceptor: &SslAcceptor, stream: TcpStream) -> Result<()> {
    let mut tls: SslStream<TcpStream> = acceptor.accept(stream).context("handshake")?;
    let mut buf = Vec::with_capacity(1024);
    while let Some(end) = http::read_head(&mut tls, &mut buf).context("read request")? {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let status = match http::parse_request_line(&head) {
            Some(req) if req.path == "/" => 200,
            Some(req) if req.path == "/sleep" => {
                let ms = http::query_param(req.query, "ms").unwrap_or(0).min(10_000);
                std::thread::sleep(Duration::from_millis(ms));
                200
            }
            Some(_) => 404,
            None => 400,
        };
        tls.write_all(&http::build_response(status, &[], b"ok\n"))?;
    }
    let _ = tls.shutdown();
    Ok(())
}
