//! containerd's task API (ttrpc) on the shim's [`Service`]: each call goes
//! to the shim's operation of the same name (`service.rs`), whose errors
//! become ttrpc statuses.

use containerd_shim::api;
use containerd_shim::{TtrpcContext, TtrpcResult};

use crate::service::{ok, timestamp, Service};

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = ok(self.inner.create(&req).map_err(|e| self.inner.explain(e)))?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = ok(self
            .inner
            .start(&req.id, &req.exec_id)
            .map_err(|e| self.inner.explain(e)))?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        ok(self.inner.state(&req.id, &req.exec_id))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        ok(self.inner.exec(&req).map_err(|e| self.inner.explain(e)))?;
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (_, p) = ok(self.inner.process(&req.id, &req.exec_id))?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        ok(p.resize(clamp(req.height), clamp(req.width)))?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let (_, p) = ok(self.inner.process(&req.id, &req.exec_id))?;
        if req.stdin {
            ok(p.close_stdin())?;
        }
        Ok(api::Empty::default())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        ok(self.inner.kill(&req))?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (_, p) = ok(self.inner.process(&req.id, &req.exec_id))?;
        let (code, at) = p.wait();
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        ok(self.inner.delete(&req.id, &req.exec_id))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = ok(self.inner.pids(&req.id))?;
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        ok(self.inner.set_paused(&req.id, true))?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        ok(self.inner.set_paused(&req.id, false))?;
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        ok(self.inner.update(&req))?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        ok(self.inner.stats(&req.id))
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.vmm_pid();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("flint shim {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.inner.shutdown();
        Ok(api::Empty::default())
    }
}
