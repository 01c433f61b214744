"""The README and the docs pages link to files that exist, and to headings that exist in them.

A relative link is resolved from the page that holds it (README.md, docs/*.md); a link into a Markdown
page with ``#anchor`` must name one of that page's headings as GitHub spells them. Links inside code
(fenced blocks, `spans`) and to other sites are not links here.
"""
import re
from pathlib import Path

from tests.conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The page without its code: fenced blocks and inline spans removed."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces to hyphens, a repeated
    one numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(root: Path) -> list[str]:
    """Every relative link of README.md and docs/*.md whose file, or whose heading, is missing."""
    broken = []
    for page in pages(root):
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}: {target}"
            if not file.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where} (no heading #{anchor} in {file.name})")
    return broken


def test_every_link_between_the_readme_and_the_docs_reaches_its_file_and_heading():
    assert broken_links(ROOT) == []


def test_a_missing_file_or_heading_is_reported_and_code_is_not_read_as_a_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Title\n\nSee [the index](docs/index.md), [a page](docs/gone.md), [setup](docs/index.md#set-up-a-gpu)\n"
        "and [here](#title), [nowhere](#nowhere), [a site](https://example.org/x.md).\n\n"
        "```bash\necho '[not a link](docs/absent.md)'\n```\n\n`[nor this](docs/absent.md)`\n")
    (tmp_path / "docs" / "index.md").write_text("# Docs\n\n## Set up a GPU: step 1\n\nBack to [the README](../README.md).\n"
                                                "[Up](../README.md#title) and [a heading](#docs).\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/gone.md (no such file)",
        "README.md: docs/index.md#set-up-a-gpu (no heading #set-up-a-gpu in index.md)",
        "README.md: #nowhere (no heading #nowhere in README.md)",
    ]
    (tmp_path / "docs" / "index.md").write_text("# Docs\n\n## Set up a GPU\n")
    assert "README.md: docs/index.md#set-up-a-gpu (no heading #set-up-a-gpu in index.md)" not in broken_links(tmp_path)


def test_github_anchors_drop_punctuation_and_number_repeats(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Outgrowing one machine: NNI's remote training service\n\n## Notes\n\n## Notes\n\n"
                    "```\n# not a heading\n```\n### [Linked](x.md) heading\n")
    assert anchors(page) == {"outgrowing-one-machine-nnis-remote-training-service", "notes", "notes-1",
                             "linked-heading"}


def test_the_readme_links_the_docs_index_and_the_index_lists_every_page():
    readme = prose((ROOT / "README.md").read_text())
    assert "(docs/index.md)" in readme
    index = prose((ROOT / "docs" / "index.md").read_text())
    listed = set(LINK.findall(index))
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "index.md" and p.name not in listed]
    assert missing == []
