"""The virtual display works: a Qt window holding a VisPy canvas draws with real OpenGL.

This guards the test machine's set-up (Xvfb, Mesa) that every GUI test relies on.
"""

import numpy as np
import pytest

pytest.importorskip("PyQt5")


def test_vispy_canvas_in_qt_window_draws(qtbot):
    from PyQt5.QtWidgets import QMainWindow
    from vispy import app, gloo

    app.use_app("pyqt5")
    canvas = app.Canvas(size=(64, 48), show=False, keys=None)

    @canvas.connect
    def on_draw(event):
        gloo.set_viewport(0, 0, *canvas.physical_size)
        gloo.clear(color=(1.0, 0.0, 0.0, 1.0))

    window = QMainWindow()
    window.setCentralWidget(canvas.native)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    image = canvas.render()
    renderer = gloo.gl.glGetParameter(gloo.gl.GL_RENDERER)
    canvas.close()
    assert image.shape[2] == 4
    assert np.all(image[..., 0] == 255) and np.all(image[..., 1] == 0), renderer
