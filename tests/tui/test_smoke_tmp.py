from console.tui.app import FleetApp
from tests.tui.fleetdata import Requests, SimFleet


async def test_smoke() -> None:
    sim = SimFleet()
    app = FleetApp(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        print(app.screen)
        await pilot.press("enter")
        await pilot.pause()
        print(app.screen)
        app.save_screenshot("/tmp/node.svg")
        await pilot.press("escape", "d")
        await pilot.pause()
        print(app.screen)
        app.save_screenshot("/tmp/drain.svg")
