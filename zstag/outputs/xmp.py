"""XMP sidecars: `x.jpg.xmp` beside `x.jpg`, tags as `dc:subject` keywords (what darktable, digiKam
and Lightroom read) and scores in a zstag namespace.

An existing sidecar is merged, never clobbered: its other metadata stays, keywords the user wrote
stay, and only the keywords zstag itself wrote earlier (listed under zstag:scores) are replaced
(`safe`, `overwrite`) or kept alongside the new ones (`append`); `skip` leaves existing sidecars
alone. A sidecar that is not valid XML is never touched: the image is named as not tagged.
Characters XML 1.0 cannot hold (most control characters) are written as U+FFFD.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from zstag.core.atomic import atomic_write_text
from zstag.core.errors import ImageError
from zstag.outputs import Tags, sidecar_path

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",  # registered so a merged sidecar keeps its usual prefix
    "zstag": "https://github.com/zstag/zstag/ns/1.0/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """`text` with the characters XML 1.0 forbids replaced: ElementTree would write them as they are,
    and the sidecar could then not be read again (by zstag's next run or by anyone)."""
    return _NOT_XML.sub("\ufffd", text)


def _q(name: str) -> str:
    prefix, local = name.split(":")
    return f"{{{NS[prefix]}}}{local}"


def _empty_packet() -> ET.Element:
    root = ET.Element(_q("x:xmpmeta"))
    rdf = ET.SubElement(root, _q("rdf:RDF"))
    ET.SubElement(rdf, _q("rdf:Description"), {_q("rdf:about"): ""})
    return root


def _read(path: Path) -> ET.Element:
    text = path.read_text(encoding="utf-8", errors="replace")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ImageError(f"{path}: XMP sidecar with a DOCTYPE/ENTITY is not merged (unsafe XML)")
    try:
        root = ET.fromstring(
            text[text.find("<x:xmpmeta") : text.rfind("</x:xmpmeta>") + len("</x:xmpmeta>")]
            if "<x:xmpmeta" in text
            else text
        )
    except ET.ParseError as exc:
        raise ImageError(f"{path}: existing XMP sidecar is not valid XML ({exc})") from None
    if root.tag == _q("rdf:RDF"):
        wrapper = ET.Element(_q("x:xmpmeta"))
        wrapper.append(root)
        root = wrapper
    return root


def _bag(parent: ET.Element, name: str) -> ET.Element:
    holder = parent.find(name, NS)
    if holder is None:
        holder = ET.SubElement(parent, _q(name))
    bag = holder.find("rdf:Bag", NS)
    if bag is None:
        bag = ET.SubElement(holder, _q("rdf:Bag"))
    return bag


def merge_tags(root: ET.Element, tags: Tags, mode: str) -> ET.Element:
    rdf = root.find("rdf:RDF", NS)
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf:RDF"))
    desc = rdf.find("rdf:Description", NS)
    if desc is None:
        desc = ET.SubElement(rdf, _q("rdf:Description"), {_q("rdf:about"): ""})
    subjects = _bag(desc, "dc:subject")
    scores = _bag(desc, "zstag:scores")
    ours = {item.findtext("zstag:label", default="", namespaces=NS): item for item in scores.findall("rdf:li", NS)}
    keywords = [li.text or "" for li in subjects.findall("rdf:li", NS)]
    if mode in ("safe", "overwrite"):  # both replace the keywords zstag wrote earlier
        keywords = [k for k in keywords if k not in ours]
        for item in list(scores):
            scores.remove(item)
        ours = {}
    for label, score in ((_xml_text(label), score) for label, score in tags):
        if label not in keywords:
            keywords.append(label)
        entry = ours.get(label)
        if entry is None:
            entry = ET.SubElement(scores, _q("rdf:li"), {_q("rdf:parseType"): "Resource"})
            ET.SubElement(entry, _q("zstag:label")).text = label
        value = entry.find("zstag:score", NS)
        if value is None:  # a new entry, or one whose score an earlier writer dropped
            value = ET.SubElement(entry, _q("zstag:score"))
        value.text = f"{score:.6g}"
    for li in list(subjects):
        subjects.remove(li)
    for k in keywords:
        ET.SubElement(subjects, _q("rdf:li")).text = k
    return root


def write_xmp_sidecar(image_path: Path, tags: Tags, mode: str = "safe") -> None:
    """Write or merge `image_path`'s XMP sidecar; ImageError when an existing one cannot be read."""
    sidecar = sidecar_path(image_path, "xmp")
    if sidecar.exists() and mode == "skip":
        return
    root = _read(sidecar) if sidecar.exists() else _empty_packet()
    merge_tags(root, tags, mode)
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    atomic_write_text(
        sidecar, f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n{body}\n<?xpacket end="w"?>\n'
    )
