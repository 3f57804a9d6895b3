"""Check my setup: the first cell of lesson 1 says in one line each what is ready and what to fix.

On Colab the usual problems are a runtime without a GPU, a Drive too full for the course's
models, and a library older than the course needs; anywhere, a package installed without its
files. Each check gives one line: what it found and, when something is wrong, what to do.
"""

import importlib.metadata
import shutil
from pathlib import Path

from .language import say

DRIVE_NEEDS_GB = 4.5  # the course keeps at most ~4 GB on Drive at once (benchmarks/README.md's Colab table)
DISK_NEEDS_GB = 1.0  # offline: the toy models and class images are small
OK, WARN, FIX = "✅", "⚠️", "❌"


def gpu_line(in_colab: bool, offline: bool, device: str) -> tuple[str, str]:
    import torch

    from .colab import COURSE_GIB
    from .memory import gpu_memory_gib

    if torch.cuda.is_available():
        name, gib = torch.cuda.get_device_name(), gpu_memory_gib()
        if gib < COURSE_GIB:
            return WARN, say(
                f"GPU {name}, {gib:.1f} GiB: less than the {COURSE_GIB:.0f} GiB the course plans for; lesson 5's "
                "planner picks savers that fit, and LoRA fits where a full fine-tune does not",
                f"GPU {name}, {gib:.1f} GiB: menos que os {COURSE_GIB:.0f} GiB do plano do curso; o planejador da "
                "lição 5 escolhe o que cabe, e a LoRA cabe onde o ajuste fino completo não cabe")
        return OK, say(f"GPU {name}, {gib:.1f} GiB", f"GPU {name}, {gib:.1f} GiB")
    if not offline:  # DREAMLAB_OFFLINE=0: the Colab rehearsal runs the GPU branch on a CPU
        return WARN, say(f"no GPU, yet the lessons take their GPU branch on the {device} (DREAMLAB_OFFLINE=0): slow",
                         f"sem GPU, mas as lições seguem o caminho da GPU na {device} (DREAMLAB_OFFLINE=0): lento")
    if in_colab:
        return FIX, say(
            "no GPU on this runtime: Runtime > Change runtime type > T4 GPU, then run the lesson again "
            "from the top (without one the lessons fall back to the toy model)",
            "sem GPU neste ambiente: Ambiente de execução > Alterar o tipo de ambiente de execução > GPU T4, "
            "e rode a lição de novo desde o início (sem GPU as lições usam o modelo de brinquedo)")
    return OK, say("no GPU: the lessons run offline, the toy model on the CPU",
                   "sem GPU: as lições rodam offline, com o modelo de brinquedo na CPU")


def space_line(folder: Path, on_drive: bool) -> tuple[str, str]:
    from .preflight import existing_parent

    folder = existing_parent(folder)  # a folder the course has not made yet: ask its disk
    free = shutil.disk_usage(folder).free / 1e9
    needs = DRIVE_NEEDS_GB if on_drive else DISK_NEEDS_GB
    where = say("Drive", "Drive") if on_drive else say("disk", "disco")
    if free >= needs:
        return OK, say(f"{where}: {free:.1f} GB free ({folder})", f"{where}: {free:.1f} GB livres ({folder})")
    if on_drive:
        return FIX, say(
            f"Drive: {free:.1f} GB free, the course keeps up to {needs:g} GB there: empty Drive's bin and delete "
            "old files at drive.google.com, or set SAVE_TO_DRIVE = False (a disconnect then loses the run)",
            f"Drive: {free:.1f} GB livres, e o curso guarda até {needs:g} GB lá: esvazie a lixeira e apague "
            "arquivos antigos em drive.google.com, ou use SAVE_TO_DRIVE = False (uma desconexão perde o treino)")
    return FIX, say(f"disk: {free:.1f} GB free in {folder}, the course needs about {needs:g} GB: free some space",
                    f"disco: {free:.1f} GB livres em {folder}, o curso precisa de uns {needs:g} GB: libere espaço")


def package_line() -> tuple[str, str]:
    from packaging.requirements import Requirement

    import dreamlab

    if not getattr(dreamlab, "__file__", None) or not hasattr(dreamlab, "Settings"):
        return FIX, say("`import dreamlab` found a folder, not the package: run cell 1 again, then "
                        "Runtime > Restart session",
                        "`import dreamlab` achou uma pasta, não o pacote: rode a célula 1 de novo e depois "
                        "Ambiente de execução > Reiniciar sessão")
    old = []
    for text in importlib.metadata.requires("dreamlab") or []:
        requirement = Requirement(text)
        if requirement.marker is not None:  # the extras (lessons, lab, dev): not needed here
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            old.append(f"{requirement.name} ({say('missing', 'ausente')})")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            old.append(f"{requirement.name} {version} ({say('needs', 'precisa de')} {requirement.specifier})")
    if old:
        names = " ".join(o.split()[0] for o in old)
        return FIX, say(f"{', '.join(old)}: run `%pip install -U {names}`, then Runtime > Restart session",
                        f"{', '.join(old)}: rode `%pip install -U {names}` e depois Ambiente de execução > "
                        "Reiniciar sessão")
    return OK, say(f"dreamlab {dreamlab.__version__} ({Path(dreamlab.__file__).parent}), its libraries new enough",
                   f"dreamlab {dreamlab.__version__} ({Path(dreamlab.__file__).parent}), bibliotecas em dia")


def toy_model_line() -> tuple[str, str]:
    from .errors import DreamlabError
    from .models import check_model_folder
    from .offline import TOY_MODEL

    try:
        check_model_folder(TOY_MODEL)
    except DreamlabError:
        return FIX, say(f"the offline toy model is missing from {TOY_MODEL}: reinstall the package "
                        "(cell 1, or pip install --force-reinstall) from the course's repository",
                        f"o modelo de brinquedo não está em {TOY_MODEL}: reinstale o pacote (célula 1, ou "
                        "pip install --force-reinstall) a partir do repositório do curso")
    return OK, say("the offline toy model is there", "o modelo de brinquedo está no lugar")


def check_setup(course_folder: Path) -> list[str]:
    """Print one line per check and a verdict; return the lines that need fixing (empty: ready).
    `course_folder`: where the course keeps its work (colab.course_folder(): Drive on Colab)."""
    from . import colab

    lines = [gpu_line(colab.in_colab(), colab.offline(), colab.device()),
             space_line(course_folder, on_drive="MyDrive" in Path(course_folder).parts),
             package_line(), toy_model_line()]
    for mark, text in lines:
        print(mark, text)
    problems = [text for mark, text in lines if mark == FIX]
    print(say("Ready: go on." if not problems else f"Fix first: {problems[0]}",
              "Tudo pronto: pode seguir." if not problems else f"Corrija antes: {problems[0]}"))
    return problems
