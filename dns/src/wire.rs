//! DNS messages on the wire (hickory-proto): a query in, the zone's answer out as a response
//! with CoreDNS's TTL; FORMERR for what does not parse. Pure functions over bytes.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record as WireRecord, RecordType};

use crate::zone::{Answer, QueryType, Record, Zone};

/// The TTL of every answer (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;

/// What to do with a query.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: forward the query as it came.
    Forward,
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(format!("{text}.")).ok()
}

fn wire(record: &Record) -> Option<WireRecord> {
    Some(match record {
        Record::A { name: n, ip } => WireRecord::from_rdata(name(n)?, TTL, RData::A(A(*ip))),
        Record::Cname { name: n, target } => {
            WireRecord::from_rdata(name(n)?, TTL, RData::CNAME(CNAME(name(target)?)))
        }
        Record::Srv {
            name: n,
            port,
            target,
        } => WireRecord::from_rdata(
            name(n)?,
            TTL,
            RData::SRV(SRV::new(0, 100, *port, name(target)?)),
        ),
    })
}

/// The reply to the query in `bytes`.
pub fn reply(zone: &Zone, bytes: &[u8]) -> Reply {
    let Ok(query) = Message::from_vec(bytes) else {
        // Echo the ID if there is one.
        let id = bytes
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let error = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
        return Reply::Answer(error.to_vec().unwrap_or_default());
    };
    let Some(question) = query.queries().first() else {
        let error = Message::error_msg(query.id(), query.op_code(), ResponseCode::FormErr);
        return Reply::Answer(error.to_vec().unwrap_or_default());
    };
    let qtype = match question.query_type() {
        RecordType::A => QueryType::A,
        RecordType::SRV => QueryType::Srv,
        _ => QueryType::Other,
    };
    let answer = zone.answer(&question.name().to_ascii(), qtype);
    if answer == Answer::NotOurs {
        return Reply::Forward;
    }
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match answer {
        Answer::Found {
            answers,
            additional,
        } => {
            response.set_response_code(ResponseCode::NoError);
            for record in answers.iter().filter_map(wire) {
                response.add_answer(record);
            }
            for record in additional.iter().filter_map(wire) {
                response.add_additional(record);
            }
        }
        Answer::NoData => {
            response.set_response_code(ResponseCode::NoError);
        }
        Answer::NxDomain | Answer::NotOurs => {
            response.set_response_code(ResponseCode::NXDomain);
        }
    }
    Reply::Answer(response.to_vec().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;

    fn ask(zone: &Zone, name_text: &str, t: RecordType) -> Reply {
        let mut q = Message::new();
        q.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(name(name_text).unwrap(), t));
        reply(zone, &q.to_vec().unwrap())
    }

    #[test]
    fn names_outside_the_domain_are_forwarded_and_garbage_is_a_format_error() {
        let zone = Zone::build("cluster.local", &[], &[]);
        assert!(matches!(
            ask(&zone, "example.com", RecordType::A),
            Reply::Forward
        ));
        let Reply::Answer(bytes) = ask(&zone, "nothing.ns.svc.cluster.local", RecordType::A) else {
            panic!("ours");
        };
        let msg = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            (msg.id(), msg.response_code()),
            (4242, ResponseCode::NXDomain)
        );
        let Reply::Answer(bytes) = reply(&zone, &[0x12, 0x34, 0xff]) else {
            panic!("an answer");
        };
        let msg = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            (msg.id(), msg.response_code()),
            (0x1234, ResponseCode::FormErr)
        );
    }

    #[test]
    fn a_pod_name_answers_its_address_with_coredns_ttl() {
        let zone = Zone::build("cluster.local", &[], &[]);
        let Reply::Answer(bytes) = ask(&zone, "10-42-0-7.default.pod.cluster.local", RecordType::A)
        else {
            panic!("ours");
        };
        let msg = Message::from_vec(&bytes).unwrap();
        assert!(msg.authoritative());
        let answer = &msg.answers()[0];
        assert_eq!(answer.ttl(), TTL);
        assert_eq!(answer.data(), &RData::A(A::new(10, 42, 0, 7)));
    }
}
