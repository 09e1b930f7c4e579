"""Writes the sample knowledge base's binary documents: security-policy.pdf and code-review.docx.

The files are committed; run this only to change them:
    .venv/bin/python examples/make_binary_docs.py
It needs the dev extra (fpdf2 for the PDF; python-docx is a runtime dependency).
"""

from __future__ import annotations

from pathlib import Path

KNOWLEDGE = Path(__file__).resolve().parent / "knowledge"

SECURITY_POLICY = [
    ("Security policy", None),
    ("Scope", "This policy applies to every employee and contractor, and to every device that can reach company systems."),
    ("Passwords and sign-in", "Use the company password manager for every work account. Two-factor authentication is "
     "required for email, GitHub and the cloud console; use a hardware security key where the service supports one."),
    ("Laptops", "Laptops must use full-disk encryption and lock the screen after five minutes without use. "
     "Install operating system updates within seven days of their release."),
    ("Lost or stolen devices", "Report a lost or stolen laptop or phone to security@example.com within one hour, "
     "even outside working hours. The security team can wipe the device remotely."),
    ("Customer data", "Customer data never leaves production systems. Do not copy it to laptops, chat messages or "
     "tickets; use the anonymised staging data for debugging."),
]

CODE_REVIEW = {
    "title": "Code review guidelines",
    "sections": [
        ("Approvals", ["Every pull request needs two approving reviews before it can be merged.",
                       "One of the reviewers must belong to the team that owns the code."]),
        ("Response time", ["Reviewers answer a review request within one working day.",
                           "If a review blocks a release, say so in the pull request title."]),
        ("What to look for", ["Correctness and tests first, then readability, then style.",
                              "Style questions that a linter can settle are settled by the linter."]),
    ],
}


def write_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Security policy")
    pdf.set_author("Security team")
    pdf.add_page()
    for heading, body in SECURITY_POLICY:
        if body is None:
            pdf.set_font("Helvetica", "B", 18)
            pdf.cell(0, 12, heading, new_x="LMARGIN", new_y="NEXT")
            continue
        pdf.set_font("Helvetica", "B", 13)
        pdf.cell(0, 10, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.output(str(path))


def write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = CODE_REVIEW["title"]
    document.add_heading(CODE_REVIEW["title"], level=1)
    for heading, paragraphs in CODE_REVIEW["sections"]:
        document.add_heading(heading, level=2)
        for text in paragraphs:
            document.add_paragraph(text)
    document.save(str(path))


if __name__ == "__main__":
    write_pdf(KNOWLEDGE / "security-policy.pdf")
    write_docx(KNOWLEDGE / "code-review.docx")
    print(f"wrote {KNOWLEDGE / 'security-policy.pdf'} and {KNOWLEDGE / 'code-review.docx'}")
