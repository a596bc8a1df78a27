"""Conversion both ways and the privacy block, with small stand-in backends (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bridges.core.errors import ConversionError
from bridges.core.events import MatrixMessage, Media, PortalRef
from bridges.sms.backends import base
from bridges.sms.backends.base import MediaRef, data_url
from bridges.sms.convert import convert_message, message_data, msgtype_for, privacy
from bridges.sms.handle_matrix import outgoing_text


@dataclass
class Stub:
    name: str
    third_party: bool
    can_send_media: bool = True

    async def fetch_media(self, ref: MediaRef) -> base.Media:
        inline = base.decode_data_url(ref)
        if inline is not None:
            return inline
        raise ConversionError("the gateway no longer has it")


@pytest.mark.parametrize("name,third_party,seen_by", [
    ("smsgate", False, ["mobile carriers"]),
    ("smsgate", True, ["mobile carriers", "SMSGate cloud server"]),
    ("twilio", True, ["mobile carriers", "Twilio"]),
    ("gammu", False, ["mobile carriers"]),
])
def test_privacy_says_who_sees_the_message(name: str, third_party: bool, seen_by: list[str]) -> None:
    block = privacy(Stub(name, third_party))  # type: ignore[arg-type]
    assert block["transport"] == "carrier_plaintext" and block["end_to_end"] is False
    assert (block["backend"], block["third_party"], block["seen_by"]) == (name, third_party, seen_by)


async def test_mms_parts_with_a_missing_and_an_oversized_attachment() -> None:
    refs = (MediaRef(data_url(b"small", "image/jpeg"), "image/jpeg", "a.jpg"),
            MediaRef("https://gone.example/x", "video/mp4"),
            MediaRef(data_url(b"x" * 2000, "audio/amr"), "audio/amr"))
    converted = await convert_message(Stub("twilio", True), message_data("look", refs, "twilio"),  # type: ignore[arg-type]
                                      max_media_size=1000)
    kinds = [(p.part_id, p.content["msgtype"]) for p in converted.parts]
    assert kinds == [("text", "m.text"), ("media0", "m.image"), ("media1", "m.notice"), ("media2", "m.notice")]
    assert converted.parts[1].media is not None and converted.parts[1].media.data == b"small"
    assert "no longer has it" in converted.parts[2].content["body"]
    assert "larger than this bridge takes" in converted.parts[3].content["body"]
    assert msgtype_for("application/pdf") == "m.file" and msgtype_for("audio/amr") == "m.audio"


def test_outgoing_text() -> None:
    portal = PortalRef("+33612345678", "l", None, {})

    def msg(msgtype: str, body: str, media: Media | None = None) -> MatrixMessage:
        return MatrixMessage("$e", portal, "@a:x", msgtype, body, media=media)

    assert outgoing_text(msg("m.text", "hi")) == "hi"
    assert outgoing_text(msg("m.emote", "waves")) == "* waves"
    pic = Media(b"p", "image/png", "p.png")
    assert outgoing_text(msg("m.image", "p.png", pic)) == ""
    assert outgoing_text(msg("m.image", "a caption", pic)) == "a caption"
