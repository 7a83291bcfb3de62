//! The DER reading the authorisation layer needs: the subject Common Name of an X.509
//! certificate. Dependency-free (the fuzz target `der_subject` includes this file as is); refuses
//! anything malformed rather than guessing.

/// The Common Name of an X.509 certificate's subject (DER), or None when it has none or the DER
/// is malformed.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial INTEGER,
    //   signature SEQUENCE, issuer Name, validity SEQUENCE, subject Name, ... }, ... }
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 7 {
        let (tag, value, rest) = tlv(tbs)?;
        fields.push((tag, value));
        tbs = rest;
    }
    let skip = usize::from(fields.first()?.0 == 0xa0); // explicit version tag
    let (tag, mut name) = *fields.get(skip + 4)?;
    if tag != 0x30 {
        return None;
    }
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }; the last CN wins.
    let mut cn = None;
    while !name.is_empty() {
        let (set_tag, mut set, rest) = tlv(name)?;
        name = rest;
        if set_tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (_, atv, rest) = tlv(set)?;
            set = rest;
            let (oid_tag, oid, after) = tlv(atv)?;
            let (vtag, value, _) = tlv(after)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] && matches!(vtag, 0x0c | 0x13 | 0x16) {
                cn = Some(std::str::from_utf8(value).ok()?.to_string());
            }
        }
    }
    cn
}

/// One DER TLV: (tag, value, the rest). Single-byte tags; definite lengths up to 4 bytes.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[header..end], &b[end..]))
}
