"""XMP sidecars: a new sidecar parses back; an existing one is merged without losing the user's
metadata or keywords; unsafe XML is refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from zstag.core.errors import ImageError
from zstag.outputs import sidecar_path
from zstag.outputs.xmp import write_xmp_sidecar

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "zstag": "https://github.com/zstag/zstag/ns/1.0/",
}

# What a photo manager leaves behind: a rating attribute, a colour label element, a user keyword.
EXISTING = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmp:Rating="4">
   <xmp:Label>Red</xmp:Label>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def parse(sidecar: Path) -> ET.Element:
    return ET.fromstring(sidecar.read_text(encoding="utf-8"))


def keywords(sidecar: Path) -> list[str]:
    return [li.text for li in parse(sidecar).findall(".//dc:subject/rdf:Bag/rdf:li", NS)]


def scores(sidecar: Path) -> dict[str, float]:
    items = parse(sidecar).findall(".//zstag:scores/rdf:Bag/rdf:li", NS)
    return {li.findtext("zstag:label", namespaces=NS): float(li.findtext("zstag:score", namespaces=NS)) for li in items}


@pytest.fixture
def photo(tmp_path) -> Path:
    return tmp_path / "IMG_0001.jpg"


def test_new_sidecar_parses_back(photo):
    write_xmp_sidecar(photo, [("dog", 0.93), ("coral reef", 0.4)])
    sidecar = sidecar_path(photo, "xmp")
    text = sidecar.read_text(encoding="utf-8")
    assert text.startswith("<?xpacket begin=") and text.rstrip().endswith('<?xpacket end="w"?>')
    root = parse(sidecar)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    assert root.find("rdf:RDF/rdf:Description", NS) is not None
    assert keywords(sidecar) == ["dog", "coral reef"]
    assert scores(sidecar) == {"dog": 0.93, "coral reef": 0.4}
    assert sorted(p.name for p in photo.parent.iterdir()) == ["IMG_0001.jpg.xmp"]


def test_merge_keeps_other_metadata_and_user_keywords(photo):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text(EXISTING, encoding="utf-8")
    write_xmp_sidecar(photo, [("dog", 0.9), ("beach", 0.7)], "overwrite")
    root = parse(sidecar)
    desc = root.find("rdf:RDF/rdf:Description", NS)
    assert desc.get(f"{{{NS['xmp']}}}Rating") == "4"
    assert desc.findtext("xmp:Label", namespaces=NS) == "Red"
    assert root.get(f"{{{NS['x']}}}xmptk") == "XMP Core 4.4.0-Exiv2"
    assert keywords(sidecar) == ["holiday", "dog", "beach"]
    assert scores(sidecar) == {"dog": 0.9, "beach": 0.7}
    assert len(root.findall("rdf:RDF/rdf:Description", NS)) == 1
    assert len(desc.findall("dc:subject", NS)) == 1


def test_overwrite_replaces_only_zstags_earlier_keywords(photo):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text(EXISTING, encoding="utf-8")
    write_xmp_sidecar(photo, [("dog", 0.9), ("beach", 0.7)], "overwrite")
    write_xmp_sidecar(photo, [("cat", 0.8), ("beach", 0.6)], "overwrite")
    assert keywords(sidecar) == ["holiday", "cat", "beach"]
    assert scores(sidecar) == {"cat": 0.8, "beach": 0.6}
    assert parse(sidecar).find(".//xmp:Label", NS).text == "Red"


def test_append_keeps_zstags_earlier_keywords(photo):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text(EXISTING, encoding="utf-8")
    write_xmp_sidecar(photo, [("dog", 0.9), ("beach", 0.7)], "overwrite")
    write_xmp_sidecar(photo, [("cat", 0.8), ("beach", 0.6)], "append")
    assert keywords(sidecar) == ["holiday", "dog", "beach", "cat"]
    assert scores(sidecar) == {"dog": 0.9, "beach": 0.6, "cat": 0.8}  # a re-scored label takes the new score


def test_skip_leaves_the_file_untouched(photo):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text(EXISTING, encoding="utf-8")
    before = sidecar.read_bytes()
    write_xmp_sidecar(photo, [("dog", 0.9)], "skip")
    assert sidecar.read_bytes() == before
    write_xmp_sidecar(photo.with_name("new.jpg"), [("dog", 0.9)], "skip")  # skip still writes missing sidecars
    assert keywords(photo.with_name("new.jpg.xmp")) == ["dog"]


@pytest.mark.parametrize(
    "unsafe",
    [
        '<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>\n' + EXISTING.split("\n", 1)[1],
        EXISTING.replace("holiday", "&a;").replace(
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>', '<!DOCTYPE x [<!ENTITY a "boom">]>'
        ),
    ],
)
def test_a_sidecar_with_a_doctype_is_refused(photo, unsafe):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text(unsafe, encoding="utf-8")
    with pytest.raises(ImageError, match="DOCTYPE"):
        write_xmp_sidecar(photo, [("dog", 0.9)], "overwrite")
    assert sidecar.read_text(encoding="utf-8") == unsafe


def test_a_sidecar_that_is_not_xml_is_refused_and_kept(photo):
    sidecar = sidecar_path(photo, "xmp")
    sidecar.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>", encoding="utf-8")
    with pytest.raises(ImageError, match="not valid XML"):
        write_xmp_sidecar(photo, [("dog", 0.9)], "overwrite")
    assert "unclosed" in sidecar.read_text()


def test_characters_xml_cannot_hold_never_make_an_invalid_sidecar(photo):
    write_xmp_sidecar(photo, [("ca\x01t", 0.9), ("dog", 0.5)])
    assert keywords(sidecar_path(photo, "xmp")) == ["ca\ufffdt", "dog"]  # parses back
    write_xmp_sidecar(photo, [("ca\x01t", 0.8)])  # and the next run merges it
    assert keywords(sidecar_path(photo, "xmp")) == ["ca\ufffdt"]
