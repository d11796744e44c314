//! The demo data set (`fixtures/demo.json`, compiled in) that a new data
//! directory starts with: members with verified phones on each host
//! network and one email member, and their handsets.

use serde::Deserialize;

use crate::member::{self, Channel, Member, Phone};
use crate::service::OtpService;
use crate::sim::World;

const DEMO: &str = include_str!("../fixtures/demo.json");

#[derive(Deserialize)]
struct Demo {
    handsets: Vec<serde_json::Value>,
    members: Vec<DemoMember>,
}

#[derive(Deserialize)]
struct DemoMember {
    id: String,
    locale: String,
    residence: String,
    email: Option<String>,
    phone: Option<String>,
    notification: Option<Channel>,
}

/// Loads the demo members and handsets (their phones count as verified).
pub async fn load_demo(service: &OtpService, world: &World) -> Result<(), String> {
    let demo: Demo = serde_json::from_str(DEMO).map_err(|e| format!("fixtures/demo.json: {e}"))?;
    for mut handset in demo.handsets {
        let number = handset
            .get("number")
            .and_then(|n| n.as_str())
            .ok_or("fixtures/demo.json: a handset has no number")?;
        let number = member::parse_mobile(number).map_err(|e| format!("fixtures/demo.json: {e}"))?;
        if let Some(obj) = handset.as_object_mut() {
            obj.remove("number");
        }
        world
            .put_handset(&number, &handset)
            .await
            .map_err(|e| format!("fixtures/demo.json: {e}"))?;
    }
    for m in demo.members {
        let phone = match &m.phone {
            Some(p) => Some(Phone {
                number: member::parse_mobile(p).map_err(|e| format!("fixtures/demo.json: {e}"))?,
                verified: true,
            }),
            None => None,
        };
        let member = Member {
            id: m.id,
            locale: member::parse_locale(&m.locale).map_err(|e| e.to_string())?,
            residence: member::parse_residence(&m.residence).map_err(|e| e.to_string())?,
            email: m.email,
            phone,
            notification: m.notification,
            created_at: service.now(),
        };
        service.import_member(&member).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_file_parses() {
        let demo: super::Demo = serde_json::from_str(super::DEMO).unwrap();
        assert!(demo.members.len() >= 4);
    }
}
