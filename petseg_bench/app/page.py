"""The Gradio page: upload, model, click, perturbation; the masks side by side.

Every handler goes through :meth:`Page.respond`, which never raises: a problem with the
input (not an image, a truncated file, a click off the image, a checkpoint that will not
load) becomes one line in the status box and a Gradio warning, never a traceback.
"""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import gradio as gr

from ..errors import PetsegError, one_line, os_error_text
from ..plugins import get_registry
from . import render
from .segment import AppMessage, Request, check_click, click_sigma, describe_level, segment
from .catalog import Choice, ModelCache, find_checkpoints, no_checkpoints_line
from .uploads import Upload, UploadError, load_upload, payload_source

#: The default perturbation shown, where it is installed.
DEFAULT_PERTURBATION = "gaussian_noise"
#: Larger uploads are refused by the server before they are stored.
MAX_UPLOAD = "100mb"
#: Every prediction runs in this one queue (two cores: one at a time is the fastest).
QUEUE = "predict"


class Page:
    """The app's state shared by every session: the checkpoints listed, the model cache,
    and the folder uploads are accepted from (Gradio's upload folder unless given)."""

    def __init__(self, checkpoints: Path | str, cache: ModelCache | None = None, uploads: Path | str | None = None):
        self.folder = Path(checkpoints)
        self.choices: dict[str, Choice] = {str(c.path): c for c in find_checkpoints(self.folder)}
        self.cache = cache or ModelCache()
        self.uploads = uploads

    def upload_folder(self) -> str:
        """Where Gradio keeps what it received (``GRADIO_TEMP_DIR``, else the temp folder's gradio/)."""
        return str(self.uploads) if self.uploads is not None else gr.utils.get_upload_folder()

    def perturbation_choices(self) -> list[tuple[str, str]]:
        reg = get_registry()
        out = [("none", "none")]
        for name in sorted(reg.perturbations):
            spec = reg.perturbations[name]
            if spec.acts_on_model:  # attacks need the model's gradient: sweeps only, not the page
                continue
            tag = " (moves the click)" if spec.acts_on_clicks else ""
            out.append((f"{name}{tag}{' (unavailable)' if spec.unavailable else ''}", name))
        return out

    def levels(self, name: str | None) -> int:
        """How many levels the perturbation ``name`` has (10 for none: the slider stays)."""
        reg = get_registry()
        return len(reg.perturbations[name].levels) if name in reg.perturbations else 10

    def predictor(self, path: str | None):
        if not self.choices:
            raise PetsegError(no_checkpoints_line(self.folder))
        choice = self.choices.get(str(path)) if path else None
        if choice is None:
            raise PetsegError("Choose a model from the list.")
        if choice.problem:
            raise PetsegError(choice.problem)
        return choice, self.cache.get(choice.path)

    def respond(self, upload: Upload | None, click, model: str | None, perturbation: str | None, level) -> tuple:
        """What the page shows for this request (click view, clean overlay, perturbed
        overlay, legend, status); a problem becomes the status line."""
        if upload is None:
            return None, None, None, "", self.start_line()
        view = upload.image
        try:
            choice, pr = self.predictor(model)
            view = render.heatmap(upload.image, click if pr.needs_clicks else None, click_sigma(pr, upload.image.shape))
            result = segment(pr, Request(upload, click, perturbation, int(level or 0)))
        except AppMessage as exc:  # what to do next (click on the pet...): the status line says it
            return view, None, None, "", f"⚠ {exc}"
        except PetsegError as exc:
            return view, None, None, "", warn(str(exc))
        except Exception as exc:  # noqa: BLE001 - the page never shows a traceback
            print(f"petseg-bench app: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            return view, None, None, "", warn(f"Internal error: {type(exc).__name__}: {one_line(exc)}")
        clean_share, pert_share = result.shares()
        title = describe_level(perturbation, int(level or 0))
        legend = render.legend_html(result.n_classes, clean_share, pert_share, title)
        clean = result.clean.overlay()
        pert = clean if result.perturbed is result.clean else result.perturbed.overlay()
        info = (f"**{choice.label}**  \nimage {upload.note} · {title} · model {1000 * result.seconds:.0f} ms"
                + "".join(f"  \n{n}" for n in result.notes))
        for line in result.warnings:
            info = f"⚠ {line}  \n{info}"
        return view, clean, pert, legend, info

    def on_photo(self, payload, model, perturbation, level):
        """A new upload (file, paste, webcam) or a cleared one: decode, then predict (no click yet).
        Only a file Gradio received as an upload is read (see :func:`payload_source`)."""
        if payload is None:
            return None, None, None, None, None, "", self.start_line()
        try:
            upload = load_upload(payload_source(payload, self.upload_folder()))
        except UploadError as exc:
            return None, None, None, None, None, "", warn(str(exc))
        except Exception as exc:  # noqa: BLE001 - the page never shows a traceback
            return None, None, None, None, None, "", warn(f"The upload could not be read: {type(exc).__name__}: {one_line(exc)}")
        return (upload, None) + self.respond(upload, None, model, perturbation, level)

    def on_click(self, upload, model, perturbation, level, evt: gr.SelectData):
        """A click on the image: (x, y) from Gradio, kept as (y, x) in upload pixels."""
        if upload is None:
            return None, None, None, None, "", warn("Upload a photo first.")
        try:
            x, y = (int(round(float(v))) for v in evt.index[:2])
        except (TypeError, ValueError, IndexError):
            return None, upload.image, None, None, "", warn(f"Could not read the click position {evt.index!r}.")
        try:
            check_click((y, x), upload.image.shape)
        except AppMessage as exc:  # off the image (a stale or forged event): the point stays unset
            return None, upload.image, None, None, "", f"⚠ {exc}"
        return ((y, x),) + self.respond(upload, (y, x), model, perturbation, level)

    def on_perturbation(self, perturbation, level):
        """The level slider spans the chosen perturbation's levels."""
        top = self.levels(perturbation) - 1
        return gr.Slider(minimum=0, maximum=top, step=1, value=min(int(level or 0), top))

    def start_line(self) -> str:
        if not self.choices:
            return no_checkpoints_line(self.folder)
        return "Upload a photo of a cat or a dog (file, paste or webcam), pick a model, click on the pet."


def warn(text: str) -> str:
    """A Gradio warning (a toast, for bad input and failures) and the same line for the status box."""
    gr.Warning(text, duration=6)
    return f"⚠ {text}"


def build(page: Page) -> gr.Blocks:
    """The Blocks of the page, wired to ``page``."""
    choices = [(c.label, key) for key, c in page.choices.items()]
    perts = page.perturbation_choices()
    first_pert = DEFAULT_PERTURBATION if any(v == DEFAULT_PERTURBATION for _, v in perts) else "none"
    # The images are sent as JPEG (a tenth of PNG's encoding time); Gradio's copies of them
    # are deleted after half an hour.
    with gr.Blocks(title="petseg-bench", delete_cache=(600, 1800)) as demo:
        gr.Markdown("## petseg-bench: pet segmentation, clean and under corruption")
        upload, click = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(type="filepath", label="Photo (upload, paste or webcam)", height=320, elem_id="photo")
                model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Model (backbone named)",
                                    elem_id="model")
                pert = gr.Dropdown(perts, value=first_pert, label="Perturbation", elem_id="perturbation")
                level = gr.Slider(0, page.levels(first_pert) - 1, value=0, step=1, label="Level", elem_id="level")
            with gr.Column(scale=1):
                click_view = gr.Image(label="Click on the pet: the point and its heatmap", interactive=False,
                                      height=420, elem_id="click-view", format="jpeg")
        status = gr.Markdown(page.start_line(), elem_id="status")
        with gr.Row():
            clean = gr.Image(label="Clean prediction", interactive=False, height=360, elem_id="clean", format="jpeg")
            perturbed = gr.Image(label="Under the perturbation", interactive=False, height=360, elem_id="perturbed",
                                 format="jpeg")
            legend = gr.HTML(elem_id="legend", min_height=100)
        shown = [click_view, clean, perturbed, legend, status]
        # the photo unprocessed (a path): Gradio opening it would fail on a non-image before we could say so
        photo.change(page.on_photo, [photo, model, pert, level], [upload, click] + shown,
                     preprocess=False, show_progress="minimal", concurrency_id=QUEUE)
        click_view.select(page.on_click, [upload, model, pert, level], [click] + shown,
                          show_progress="hidden", trigger_mode="always_last", concurrency_id=QUEUE)
        redo = dict(fn=page.respond, inputs=[upload, click, model, pert, level], outputs=shown,
                    show_progress="hidden", concurrency_id=QUEUE)
        model.change(**redo)
        level.change(**redo, trigger_mode="always_last")
        pert.change(page.on_perturbation, [pert, level], [level]).then(**redo)
    return demo


def launch(checkpoints: Path | str, host: str = "127.0.0.1", port: int | None = None, cache: ModelCache | None = None,
           block: bool = True) -> gr.Blocks:
    """Serve the page on ``host:port`` (never a public share link)."""
    check_bind(host, port)  # before the checkpoints are read
    page = Page(checkpoints, cache)
    problems = [c.problem for c in page.choices.values() if c.problem] or ([] if page.choices else [page.start_line()])
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    demo = build(page)
    demo.queue(default_concurrency_limit=1)
    serve(demo, host, port, block)
    return demo


def serve(demo: gr.Blocks, host: str, port: int | None, block: bool, tries: int = 3) -> None:
    """``demo.launch`` locally, with one clear line when it cannot serve. Gradio checks that
    its page answers within 3 s; a machine busy enough to miss that gets another try."""
    for attempt in range(1, tries + 1):
        try:
            demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=False, quiet=True,
                        prevent_thread_lock=not block, max_file_size=MAX_UPLOAD, inbrowser=False)
            return
        except OSError as exc:  # taken between the check and Gradio's own bind
            why = "the port is in use" if "empty port" in str(exc) else one_line(exc, 120)
            raise PetsegError(f"cannot serve on {host}:{port}: {why} (choose another --port or --host)") from None
        except ValueError:  # Gradio could not reach its own page: a proxy, or no answer in time
            demo.close()
            if attempt == tries:
                raise PetsegError(f"the page on {host}:{port} started but did not answer Gradio's own check; if a "
                                  "proxy is set, add 127.0.0.1 and localhost to NO_PROXY, else try again") from None


def check_bind(host: str, port: int | None) -> None:
    """Bind ``host:port`` once as the server will, so that a failure says what the operating
    system said (Gradio's own message is always "Cannot find empty port")."""
    try:
        infos = socket.getaddrinfo(host or None, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else one_line(exc, 120)
        raise PetsegError(f"cannot serve on {host}:{port}: --host {host!r} is not an address: "
                          f"{why[:1].lower() + why[1:]}") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            hint = "--host must be an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        else:
            hint = "choose another --port or --host"
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else os_error_text(exc)
        raise PetsegError(f"cannot serve on {host}:{port}: {why} ({hint})") from None
