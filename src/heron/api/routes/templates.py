"""Templates and clones: mark a VM a template, clone a VM, a template or a snapshot."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.routes.vms import TaskRef, VMView, one_view
from heron.models.common import Name
from heron.models.vm import CloneRequest, TemplateSet
from heron.services import clones, templates

router = APIRouter(tags=["vms"])


@router.put("/vms/{ref}/template", response_model=VMView)
async def set_template(
    ref: Name, body: TemplateSet, request: Request, _: Principal = Depends(auth.vm_operator)
) -> VMView:
    """Make a stopped VM a template (it then never starts or migrates; VMs are cloned from
    it), or a template a VM again when no linked clone reads its disks."""
    db = request.app.state.ctx.db
    entry = await templates.set_template(db, ref, body)
    request.state.audit_target = entry.value.id
    return await one_view(db, entry)


@router.post("/vms/{ref}/clone", response_model=TaskRef, status_code=202)
async def clone_vm(
    ref: Name,
    body: CloneRequest,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> TaskRef:
    """A new VM with copies of the VM's disks (of a template, of a stopped VM, or of one of
    its snapshots) and its hardware; its NICs get fresh MACs and addresses. `linked`: the
    copies share the source's blocks copy-on-write. A `vm.clone` task makes it."""
    ctx = request.app.state.ctx
    plan = await clones.clone(ctx.db, ctx.inventory, ref, body, principal.user)
    request.state.audit_target = plan.vm.id
    return TaskRef(task=plan.task.id, vm=plan.vm.id)
